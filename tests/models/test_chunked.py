"""Chunked log-probs and entropies (models/chunked.py) against the full logits, on every tiny family
in fp32 on the CPU, full fine-tuning and LoRA: log-probs and entropies within 1e-6, every trained
parameter's gradient within 1e-5 of the largest of its tensor (at least 1: the head's backward sums
over V terms, another chunking sums them in another order), and no head output larger than a chunk.

Chunks of 3 positions over R*C = 20 (3 does not divide 20, and is smaller than C = 5); rows sampled
at different temperatures; prompts left-padded differently (images of 112 and 168 px).
Shapes: B = 2 prompts, G = 2 completions each, R = 4 rows, C = 5 completion tokens, V vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from family_models import model_config
from PIL import Image

from vqa_grpo.models.chunked import chunked_logprobs, head_inputs
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.tiny import TINY_FAMILIES

CPU = torch.device("cpu")
B, G, C, CHUNK = 2, 2, 5, 3
TEMPS = torch.tensor([0.7, 1.0, 1.3, 0.9])  # [R]
QUESTIONS = ["Is there a red circle?", "How many objects are there left of the blue square?"]


def inputs(lm):
    """The prompts repeated G times with their completions appended, the ids [R, C] and the mask."""
    images = [Image.new("RGB", (112, 112), (200, 30, 30)), Image.new("RGB", (168, 168), (30, 30, 200))]
    prompts = lm.adapter.repeat(lm.adapter.encode_prompts(lm.processor, images, QUESTIONS), G)
    tok = lm.processor.tokenizer
    words = torch.tensor(sorted(i for t, i in tok.get_vocab().items() if t.isalpha()))
    ids = words[torch.randint(len(words), (B * G, C), generator=torch.Generator().manual_seed(0))]
    mask = (torch.arange(C)[None, :] < torch.tensor([C, 2, 4, C])[:, None]).long()
    return lm.adapter.append(prompts, ids, mask), ids


def full_logprobs(lm, full, ids):
    """Today's path: the full logits [R, C, V], then log-softmax and entropy at each row's temperature."""
    logits = lm.model(**full.model_inputs(), logits_to_keep=C + 1, use_cache=False).logits[:, :-1]
    z = logits.float() / TEMPS[:, None, None]
    logp = z.gather(-1, ids[..., None]).squeeze(-1) - torch.logsumexp(z, -1)
    entropy = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    return logp, entropy.detach()


def chunked(lm, full, ids, chunk=CHUNK):
    """The same from the last hidden states, ``chunk`` positions at a time."""
    head, fn = lm.adapter.output_head(lm.model)
    with head_inputs(head) as seen:
        out = lm.model(**full.model_inputs(), logits_to_keep=C + 1, use_cache=False)
    assert out.logits.shape[1] == 0  # the model's forward built no logits
    hidden = seen[0][:, :-1]  # [R, C, H]: position P-1+t predicts completion token t
    return chunked_logprobs(
        hidden, fn, ids, TEMPS, chunk_size=chunk, with_entropy=True, params=tuple(head.parameters())
    )


def grads(lm, logp):
    """Every trained parameter's gradient of a fixed weighted sum of the log-probs."""
    lm.model.zero_grad(set_to_none=True)
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1))
    (logp * weights).sum().backward()
    return {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chunked_logprobs_entropy_and_gradients_equal_the_full_logits(family, lora, family_dirs):
    lm = load_model(model_config(family_dirs(family), lora=lora), CPU)
    lm.model.eval()  # no dropout: both passes see one function
    head, _ = lm.adapter.output_head(lm.model)
    assert any(p.requires_grad for p in head.parameters()) != lora  # LoRA leaves the head frozen
    full, ids = inputs(lm)
    ref_logp, ref_entropy = full_logprobs(lm, full, ids)
    ref_grads = grads(lm, ref_logp)

    sizes = []  # positions of every head output from here on: the chunks, forward and backward
    handle = head.register_forward_hook(lambda m, a, out: sizes.append(out.shape[:-1].numel()))
    try:
        logp, entropy = chunked(lm, full, ids)
        got = grads(lm, logp)
    finally:
        handle.remove()
    torch.testing.assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-6, rtol=0)
    assert got.keys() == ref_grads.keys() and len(got) > 0
    for name, g in got.items():
        scale = max(1.0, ref_grads[name].abs().max().item())  # rounding over V terms scales with the gradient
        assert (g - ref_grads[name]).abs().max().item() <= 1e-5 * scale, name
    # the model's own head call (0 positions), 7 chunks (3+3+...+2) and, for a trained head, 7 again in backward
    assert sizes == [0] + [3] * 6 + [2] + ([] if lora else [3] * 6 + [2])
    assert not logp.isnan().any() and entropy.requires_grad is False


def test_one_chunk_of_everything_and_no_gradient(family_dirs):
    """A chunk larger than R*C is one chunk; under no_grad nothing is kept for a backward pass."""
    lm = load_model(model_config(family_dirs("qwen2_5_vl")), CPU)
    lm.model.eval()
    full, ids = inputs(lm)
    with torch.no_grad():
        ref_logp, ref_entropy = full_logprobs(lm, full, ids)
        logp, entropy = chunked(lm, full, ids, chunk=10_000)
    torch.testing.assert_close(logp, ref_logp, atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-6, rtol=0)
    assert logp.grad_fn is None


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
