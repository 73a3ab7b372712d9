"""Chunked log-probs and entropies (models/scoring.py ``completion_logprobs``, ``chunked_logprobs``)
against the full logits (``completion_logits``), on every tiny family in fp32 on the CPU, on the
plain path, the shared prefix and the fused prefill, full fine-tuning and LoRA (plain on every family,
the shared prefix and the fused prefill on one): log-probs
and entropies within 1e-6, every trained parameter's gradient within 1e-5 of the largest of its
tensor (at least 1: the head's backward sums over V terms, another chunking sums them in another
order), and no head output larger than a chunk.

Chunks of 3 positions over R*C = 20 (3 does not divide 20, and is smaller than C = 5); rows sampled
at different temperatures; prompts left-padded differently (images of 112 and 168 px).
Shapes: B = 2 prompts, G = 2 completions each, R = 4 rows, C = 5 completion tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from family_models import model_config
from PIL import Image

from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import ForwardPlan
from vqa_grpo.models.prefix import encode_prefix
from vqa_grpo.models.scoring import (
    completion_logits,
    completion_logprobs,
    head_inputs,
    tempered_and_raw_logprobs,
    token_entropy,
    token_logprobs,
)
from vqa_grpo.models.tiny import TINY_FAMILIES

CPU = torch.device("cpu")
B, G, C, CHUNK = 2, 2, 5, 3
TEMPS = torch.tensor([0.7, 1.0, 1.3, 0.9])  # [R]
QUESTIONS = ["Is there a red circle?", "How many objects are there left of the blue square?"]
PATHS = {  # the log-prob pass's path: its plan (the family's position rule filled in), and a prefix run first?
    "plain": (ForwardPlan(), False),
    "shared prefix": (ForwardPlan(sampling="shared prefix", loss="shared prefix"), False),
    "fused prefill": (ForwardPlan(sampling="shared prefix", loss="fused prefill"), True),
}


@pytest.fixture(scope="module")
def models(family_dirs):
    """Each family's tiny model, loaded once per (family, LoRA) for this module, in eval mode (no dropout)."""
    loaded = {}

    def get(family, lora):
        if (family, lora) not in loaded:
            lm = load_model(model_config(family_dirs(family), lora=lora), CPU)
            loaded[family, lora] = lm.model.eval() and lm
        return loaded[family, lora]

    return get


def inputs(lm):
    """B prompts (left-padded differently), R completions of C word tokens right-padded: prompts, ids, mask."""
    images = [Image.new("RGB", (112, 112), (200, 30, 30)), Image.new("RGB", (168, 168), (30, 30, 200))]
    prompts = lm.adapter.encode_prompts(lm.processor, images, QUESTIONS)
    tok = lm.processor.tokenizer
    words = torch.tensor(sorted(i for t, i in tok.get_vocab().items() if t.isalpha()))
    ids = words[torch.randint(len(words), (B * G, C), generator=torch.Generator().manual_seed(0))]
    mask = (torch.arange(C)[None, :] < torch.tensor([C, 2, 4, C])[:, None]).long()
    return prompts, ids, mask


def logprobs_and_grads(lm, path, chunked, chunk=CHUNK):
    """Log-probs [R, C], entropies [R, C] and every trained parameter's gradient of a fixed weighted sum
    of the log-probs, on ``path``: chunked (completion_logprobs) or from the full logits (completion_logits)."""
    plan, fused = PATHS[path]
    plan = replace(plan, position_rule=lm.adapter.position_rule) if path != "plain" else plan
    prompts, ids, mask = inputs(lm)
    lm.model.zero_grad(set_to_none=True)
    prefix = encode_prefix(lm.model, prompts, G, plan.position_rule) if fused else None  # with gradient
    if chunked:
        plan = replace(plan, logprob_chunk_size=chunk)
        logp, entropy = completion_logprobs(
            lm.model, lm.adapter, prompts, ids, mask, plan, TEMPS, group_size=G, prefix=prefix
        )
    else:
        logits = completion_logits(lm.model, lm.adapter, prompts, ids, mask, plan, group_size=G, prefix=prefix)
        logp, entropy = token_logprobs(logits, ids, TEMPS), token_entropy(logits, TEMPS)
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1))
    (logp * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy, grads


CASES = [(f, p, False) for f in TINY_FAMILIES for p in PATHS] + [(f, "plain", True) for f in TINY_FAMILIES]
CASES += [("qwen2_5_vl", "shared prefix", True), ("qwen2_5_vl", "fused prefill", True)]  # LoRA on the prefix


@pytest.mark.parametrize("family, path, lora", CASES, ids=[f"{f}-{p}{'-lora' * lo}" for f, p, lo in CASES])
def test_chunked_logprobs_entropy_and_gradients_equal_the_full_logits(family, path, lora, models):
    lm = models(family, lora)
    head, _ = lm.adapter.output_head(lm.model)
    assert any(p.requires_grad for p in head.parameters()) != lora  # LoRA leaves the head frozen
    ref_logp, ref_entropy, ref_grads = logprobs_and_grads(lm, path, chunked=False)

    sizes = []  # positions of every head output from here on: the chunks, forward and backward
    handle = head.register_forward_hook(lambda m, a, out: sizes.append(out.shape[:-1].numel()))
    try:
        logp, entropy, grads = logprobs_and_grads(lm, path, chunked=True)
    finally:
        handle.remove()
    torch.testing.assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        scale = max(1.0, ref_grads[name].abs().max().item())  # rounding over V terms scales with the gradient
        assert (g - ref_grads[name]).abs().max().item() <= 1e-5 * scale, name
    # plain: 7 chunks of the R*C = 20 positions (inside the forward pass), then the model's own head
    # call with no positions; on the prefix: the prompts' last positions (B) first, then 6 chunks of
    # R*(C-1) = 16; a trained head's chunks once more in backward
    chunks = [3] * 6 + [2] if path == "plain" else [3] * 5 + [1]
    first = [] if path == "plain" else [B]
    assert sizes == first + chunks + [0] + ([] if lora else chunks), sizes
    assert not entropy.requires_grad


def test_one_chunk_of_everything_keeps_its_logits_for_backward(models):
    """A chunk size of at least R*C is one chunk, kept for the backward pass as the full logits are:
    the head runs once; without gradient nothing is kept."""
    lm = models("qwen2_5_vl", False)
    head, _ = lm.adapter.output_head(lm.model)
    ref_logp, ref_entropy, ref_grads = logprobs_and_grads(lm, "plain", chunked=False)
    sizes = []
    handle = head.register_forward_hook(lambda m, a, out: sizes.append(out.shape[:-1].numel()))
    try:
        logp, entropy, grads = logprobs_and_grads(lm, "plain", chunked=True, chunk=B * G * C)
    finally:
        handle.remove()
    assert sizes == [B * G * C, 0]  # all 20 at once, once, then the model's own call with no positions
    torch.testing.assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-6, rtol=0)
    for name, g in grads.items():
        assert (g - ref_grads[name]).abs().max().item() <= 1e-5 * max(1.0, ref_grads[name].abs().max().item()), name
    prompts, ids, mask = inputs(lm)
    with torch.no_grad():
        plan = ForwardPlan(logprob_chunk_size=10_000)
        logp, _ = completion_logprobs(lm.model, lm.adapter, prompts, ids, mask, plan, TEMPS, group_size=G)
    torch.testing.assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    assert logp.grad_fn is None


@pytest.mark.parametrize("path", ["plain", "shared prefix"])
def test_vllm_pi_old_and_raw_logprobs_in_chunks_equal_the_full_logits(path, models):
    """grpo/logprobs.py's vLLM pass (tempered_and_raw_logprobs: pi_old at the rows' temperatures and
    the raw log-probs, one pass, in chunks of 3) equals token_logprobs of the full logits, both ways."""
    lm = models("qwen2_5_vl", False)
    plan, _ = PATHS[path]
    plan = replace(plan, position_rule=lm.adapter.position_rule) if path != "plain" else plan
    prompts, ids, mask = inputs(lm)
    with torch.no_grad():
        logits = completion_logits(lm.model, lm.adapter, prompts, ids, mask, plan, group_size=G)
        chunked = replace(plan, logprob_chunk_size=CHUNK)
        tempered, raw = tempered_and_raw_logprobs(
            lm.model, lm.adapter, prompts, ids, mask, chunked, TEMPS, group_size=G
        )
    torch.testing.assert_close(tempered, token_logprobs(logits, ids, TEMPS), atol=1e-6, rtol=0)
    torch.testing.assert_close(raw, token_logprobs(logits, ids), atol=1e-6, rtol=0)
    assert (tempered - raw).abs().max() > 0.01  # the temperatures were applied to one of them only


def test_gemma3_causal_lm_caps_its_logits_and_the_head_does_too(family_dirs):
    """Gemma3ForCausalLM applies final_logit_softcapping after the head; the adapter's head function
    does the same (Gemma3ForConditionalGeneration, the family's auto class, caps nothing)."""
    from transformers import AutoConfig, Gemma3ForCausalLM

    from vqa_grpo.models.adapters import Gemma3Adapter

    text = AutoConfig.from_pretrained(family_dirs("gemma3")).text_config
    text.final_logit_softcapping = 0.5  # small enough that the tiny model's logits are really capped
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(text).eval()
    ids = torch.randint(5, text.vocab_size, (2, 7))
    head, fn = Gemma3Adapter().output_head(model)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [2, 7, V]
        assert logits.abs().max() <= 0.5
        with head_inputs(head) as seen:
            model(input_ids=ids)
        torch.testing.assert_close(fn(seen[0]), logits, atol=1e-6, rtol=0)
