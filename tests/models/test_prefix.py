"""The shared prefix (models/prefix.py) against the plain path, on real tiny models in fp32 on the CPU.

Each prompt run once with its KV cache expanded to G rows must give what the prompt repeated G
times gives, for every tiny family: log-probs within 1e-5, every parameter's gradient within 1e-4
(relative, vision tower included), the same sampled tokens for the same seed. Prompts are
left-padded differently (a short and a long question, images of 112 and 168 px) and completions
right-padded, so positions that only work without padding would fail here.

Shapes: B = 2 prompts, G = 4 completions each, R = 8 rows, C completion tokens, V vocabulary.
Which path a run takes (position rules, settings, fallbacks): test_prefix_plan.py.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import pytest
import torch
from family_models import model_config
from plans import on_path, rollout
from transformers import LogitsProcessorList

from vqa_grpo.config import DataConfig, GRPOConfig, RewardConfig
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.grpo import group_advantages
from vqa_grpo.grpo import plan as plan_module
from vqa_grpo.grpo.plan import choose_plan
from vqa_grpo.grpo.rollout import grpo_objective, make_rollout_and_prefill, rollout_logprobs
from vqa_grpo.models import prefix
from vqa_grpo.models.adapters import adapter_for
from vqa_grpo.models.generation import generate
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import ForwardPlan
from vqa_grpo.models.processors import RowwiseTemperatureTopP, row_sampling_params
from vqa_grpo.models.scoring import completion_logprobs
from vqa_grpo.models.tiny import TINY_FAMILIES

CPU = torch.device("cpu")
B, G, C = 2, 4, 5
SHARED_FAMILIES = tuple(f for f in TINY_FAMILIES if adapter_for(f).position_rule)


@pytest.fixture(scope="module")
def data(synth_dir):
    return load_vqa(DataConfig(path=str(synth_dir)), seed=0)


def load(path, **model):
    lm = load_model(model_config(path, **model), CPU)
    lm.model.eval()  # no dropout: the two paths must see the same function
    return lm


def padded_prompts(lm, data):
    """A short and a long question with images of 112 and 168 px: differently left-padded."""
    short = next(e for e in data.train if e.question == "How many objects are there?")
    long = next(e for e in data.train if "left or right" in e.question)
    images = [short.load_image(), long.load_image().resize((168, 168))]
    prompts = lm.adapter.encode_prompts(lm.processor, images, [short.question, long.question])
    assert (prompts.attention_mask == 0).any()  # the case under test: one prompt is padded
    return prompts


def completions(lm, seed=0):
    """R random word-token completions, right-padded at different lengths: ids, mask [R, C]."""
    tok = lm.processor.tokenizer
    words = torch.tensor(sorted(i for t, i in tok.get_vocab().items() if t.isalpha()))
    g = torch.Generator().manual_seed(seed)
    ids = words[torch.randint(len(words), (B * G, C), generator=g)]
    lengths = torch.tensor([C, 1, 3, C, 2, C, 4, 1])  # [R]
    mask = (torch.arange(C)[None, :] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, tok.pad_token_id), mask


def logprobs_and_grads(lm, prompts, ids, mask, temps, shared):
    """Log-probs [R, C] and each parameter's gradient of a fixed weighted sum of them."""
    lm.model.zero_grad(set_to_none=True)
    plan = shared if isinstance(shared, ForwardPlan) else on_path(lm.adapter, shared)
    logp, _ = completion_logprobs(
        lm.model, lm.adapter, prompts, ids, mask, plan, temps, with_entropy=False, group_size=G
    )
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
    (logp * mask * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
    return logp.detach() * mask, grads


def assert_grads_close(plain, shared):
    """Each parameter's gradient within 1e-4 of its norm, with a floor of 1e-6 of the whole
    gradient's norm: a key-projection bias has a true gradient of 0 (softmax ignores a shift
    common to all keys), and rounding alone is all either path gives it."""
    assert plain.keys() == shared.keys() and len(plain) > 0
    total = float(torch.stack([g.norm() for g in plain.values()]).norm())
    for name, g in plain.items():
        err = float((shared[name] - g).norm())
        assert err <= 1e-4 * float(g.norm()) + 1e-6 * total, (name, err, float(g.norm()))


@pytest.mark.parametrize("family", SHARED_FAMILIES)
def test_shared_prefix_logprobs_and_gradients_equal_the_plain_path(family, family_dirs, data):
    lm = load(family_dirs(family))
    assert lm.adapter.position_rule is not None
    prompts = padded_prompts(lm, data)
    ids, mask = completions(lm)
    temps = torch.tensor([0.7, 1.0, 1.3, 0.9] * B)
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, temps, shared=False)
    shared_logp, shared_grads = logprobs_and_grads(lm, prompts, ids, mask, temps, shared=True)
    assert (plain_logp.abs() > 0.1).sum() == mask.sum()  # real log-probs, not zeros compared with zeros
    assert (shared_logp - plain_logp).abs().max() < 1e-5
    vision = ("visual", "vision", "image_embed", "img_projection")
    assert any(v in n for n in plain_grads for v in vision)  # the vision tower gets its gradient on both paths
    assert_grads_close(plain_grads, shared_grads)

    # Control: completion positions off by one (as if the M-RoPE delta were dropped) change the
    # log-probs by far more than the paths differ (the tiny models' attention is nearly flat, so
    # by 3e-5 at least: 30 times the rounding difference).
    original = prefix.continuation_positions
    prefix.continuation_positions = lambda rule, start, length: original(rule, start + 1, length)
    try:
        with torch.no_grad():
            wrong, _ = completion_logprobs(
                lm.model, lm.adapter, prompts, ids, mask, on_path(lm.adapter, True), temps, group_size=G
            )
    finally:
        prefix.continuation_positions = original
    assert ((wrong * mask)[:, 1:] - plain_logp[:, 1:]).abs().max() > 3e-5


def test_a_forward_that_drops_the_cache_it_is_given_is_refused(family_dirs, data, monkeypatch):
    # A cache handed on under a name the installed transformers does not read is dropped without
    # an error: every completion token runs without the prompt (Phi-3-vision passing `cache` to
    # 5.19: log-probs up to 0.42 off, docs/scaling.md). Here no version reads the name: refused.
    lm = load(family_dirs("phi3_v"))
    prompts = padded_prompts(lm, data)
    ids, mask = completions(lm)
    P = prompts.input_ids.shape[1]
    with torch.no_grad():
        shared = prefix.encode_prefix(lm.model, prompts, G, lm.adapter.position_rule)
        monkeypatch.setattr(prefix, "cache_argument", lambda model: "kv_cache")
        want = f"Phi3VForCausalLM did not extend the KV cache it was given ({P} -> {P} positions, expected {P + C})"
        with pytest.raises(RuntimeError, match=re.escape(want)):
            shared.extend(lm.model, ids, mask)


@pytest.mark.parametrize("family", ["qwen2_vl", "phi3_v"])
def test_shared_prefix_with_lora_and_with_the_adapter_switched_off(family, family_dirs, data):
    # The reference pass for the KL term uses model.disable_adapter() with LoRA; both must match.
    lm = load(family_dirs(family), lora=True, lora_r=4)
    for _, p in lm.model.named_parameters():  # LoRA B starts at 0: move it so the adapter matters
        if "lora_B" in _:
            torch.nn.init.normal_(p, std=0.05)
    prompts = padded_prompts(lm, data)
    ids, mask = completions(lm, seed=1)
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, None, shared=False)
    shared_logp, shared_grads = logprobs_and_grads(lm, prompts, ids, mask, None, shared=True)
    assert (shared_logp - plain_logp).abs().max() < 1e-5
    assert all("lora" in n for n in plain_grads)
    assert_grads_close(plain_grads, shared_grads)
    with torch.no_grad(), lm.model.disable_adapter():
        plain, shared = on_path(lm.adapter, False), on_path(lm.adapter, True)
        base_plain, _ = completion_logprobs(lm.model, lm.adapter, prompts, ids, mask, plain, group_size=G)
        base_shared, _ = completion_logprobs(lm.model, lm.adapter, prompts, ids, mask, shared, group_size=G)
    assert ((base_shared - base_plain) * mask).abs().max() < 1e-5
    assert ((base_plain - plain_logp) * mask).abs().max() > 1e-3  # the adapter did change the policy


@pytest.mark.parametrize("family", SHARED_FAMILIES)
def test_shared_prefix_sampling_draws_the_same_tokens_as_generate(family, family_dirs, data):
    lm = load(family_dirs(family))
    prompts = padded_prompts(lm, data)
    temps, top_ps = row_sampling_params(B, G, [0.7, 1.0, 1.5], [0.9, 1.0])
    out = {}
    for shared in (False, True):
        torch.manual_seed(3)
        out[shared] = generate(
            lm.model,
            lm.adapter,
            lm.processor,
            prompts,
            on_path(lm.adapter, shared),
            max_new_tokens=6,
            do_sample=True,
            logits_processor=LogitsProcessorList([RowwiseTemperatureTopP(temps, top_ps)]),
            keep_scores=True,
            group_size=G,
        )
    plain, shared = out[False], out[True]
    assert plain.ids.shape == (B * G, 6)
    assert torch.equal(shared.ids, plain.ids) and torch.equal(shared.mask, plain.mask)
    assert len(shared.scores) == len(plain.scores)
    for a, b in zip(plain.scores, shared.scores):
        finite = torch.isfinite(a)
        assert torch.equal(finite, torch.isfinite(b))  # the same suppressed and top-p-cut tokens
        assert (a[finite] - b[finite]).abs().max() < 1e-5
    assert len({tuple(r) for r in plain.ids.tolist()}) > G  # the rows really differ
    # Greedy decoding too (what evaluation does), with the prompts used once each.
    greedy = [
        generate(lm.model, lm.adapter, lm.processor, prompts, on_path(lm.adapter, s), max_new_tokens=6)
        for s in (False, True)
    ]
    assert torch.equal(greedy[0].ids, greedy[1].ids)


def test_repetition_penalty_is_rebuilt_and_other_generate_settings_fall_back(family_dirs, data, caplog):
    lm = load(family_dirs("qwen2_vl"))
    prompts = padded_prompts(lm, data)
    lm.model.generation_config.repetition_penalty = 3.0  # strong enough to change greedy tokens
    shared = choose_plan(lm.model, lm.adapter, GRPOConfig(shared_prefix="on"))
    assert shared.sample_shared  # a repetition penalty is rebuilt: the shared prefix samples
    greedy = [
        generate(lm.model, lm.adapter, lm.processor, prompts, plan, max_new_tokens=6)
        for plan in (on_path(lm.adapter, False), shared)
    ]
    assert torch.equal(greedy[0].ids, greedy[1].ids)
    lm.model.generation_config.repetition_penalty = 1.0
    unpenalised = generate(lm.model, lm.adapter, lm.processor, prompts, shared, max_new_tokens=6)
    assert not torch.equal(unpenalised.ids, greedy[1].ids)

    lm.model.generation_config.no_repeat_ngram_size = 1  # a processor the shared sampler does not rebuild
    with caplog.at_level(logging.INFO, logger="vqa_grpo.prefix"):
        plan_module._logged.clear()
        fallback_plan = choose_plan(lm.model, lm.adapter, GRPOConfig(shared_prefix="on"))
        fallback = generate(lm.model, lm.adapter, lm.processor, prompts, fallback_plan, max_new_tokens=6)
        plain = generate(lm.model, lm.adapter, lm.processor, prompts, on_path(lm.adapter, False), max_new_tokens=6)
    assert "GRPO forward plan: sampling: plain;" in caplog.text
    assert "the generation config sets no_repeat_ngram_size" in caplog.text
    assert torch.equal(fallback.ids, plain.ids)
    assert all(len(set(r[: int(m.sum())])) == int(m.sum()) for r, m in zip(plain.ids.tolist(), plain.mask))


def test_rollout_and_grpo_step_are_the_same_on_both_paths(family_dirs, data, caplog):
    lm = load(family_dirs("qwen2_vl"))
    examples = data.train[:B]
    images = [e.load_image() for e in examples]
    results = {}
    for setting in ("off", "auto"):
        grpo = GRPOConfig(num_generations=G, max_completion_length=4, shared_prefix=setting, beta=0.04)
        plan_module._logged.clear()
        with caplog.at_level(logging.INFO, logger="vqa_grpo.prefix"):
            torch.manual_seed(0)
            ro = rollout(lm.model, lm.adapter, lm.processor, examples, images, grpo, RewardConfig(), CPU)
        ro.rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 0.2, 0.0, 1.0])
        ro.advantages = group_advantages(ro.rewards, G)
        with torch.no_grad():
            ro.ref_logprobs = (
                rollout_logprobs(lm.model, lm.adapter, ro, with_entropy=False)[0] - 0.01 * ro.completion_mask
            )
        lm.model.zero_grad(set_to_none=True)
        loss, stats = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
        loss.backward()
        results[setting] = ro, loss.detach(), stats, {n: p.grad.clone() for n, p in lm.model.named_parameters()}
    assert (
        "GRPO forward plan: sampling: plain; loss: plain; log-prob passes: plain [grpo.shared_prefix=off]"
        in caplog.text
    )
    assert (
        "GRPO forward plan: sampling: shared prefix; loss: shared prefix; log-prob passes: shared prefix [qwen2_vl "
        "adapter, "
        "mrope positions, no fused prefill: grpo.fuse_prefill=off]" in caplog.text  # plans.rollout keeps no prefill
    )
    (ro_p, loss_p, stats_p, grads_p), (ro_s, loss_s, stats_s, grads_s) = results["off"], results["auto"]
    assert not ro_p.sampled_on_prefix and ro_s.sampled_on_prefix
    assert stats_p["shared_prefix"] == 0.0 and stats_s["shared_prefix"] == 1.0
    assert torch.equal(ro_s.completion_ids, ro_p.completion_ids)
    assert (ro_s.sampling_logprobs - ro_p.sampling_logprobs).abs().max() < 1e-5
    assert abs(float(loss_s - loss_p)) < 1e-5 and float(loss_p) != 0.0
    assert stats_s["kl"] == pytest.approx(stats_p["kl"], abs=1e-6) and stats_p["kl"] > 0
    assert_grads_close(grads_p, grads_s)


def test_gradient_checkpointing_keeps_the_loss_on_the_plain_path(family_dirs, data, caplog):
    lm = load(family_dirs("qwen2_vl"), gradient_checkpointing=True)
    lm.model.train()
    prompts = padded_prompts(lm, data)
    ids, mask = completions(lm)
    plan_module._logged.clear()
    with caplog.at_level(logging.INFO, logger="vqa_grpo.prefix"):
        plan = choose_plan(lm.model, lm.adapter, GRPOConfig(shared_prefix="on"))
        shared_logp, shared_grads = logprobs_and_grads(lm, prompts, ids, mask, None, shared=plan)
    assert "loss: plain; log-prob passes: shared prefix" in caplog.text
    assert "gradient checkpointing drops the KV cache" in caplog.text
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, None, shared=False)
    assert torch.equal(shared_logp, plain_logp)
    assert_grads_close(plain_grads, shared_grads)


def test_shared_prefix_loss_through_a_ddp_wrapper(family_dirs, data, tmp_path):
    # The loss runs through DistributedDataParallel when several processes train: two forward
    # calls (prefix, then completions) before one backward must still give each parameter its
    # gradient once. One gloo process is enough to run DDP's reducer and hooks.
    import torch.distributed as dist

    lm = load(family_dirs("qwen2_vl"))
    prompts = padded_prompts(lm, data)
    ids, mask = completions(lm)
    plain_logp, plain_grads = logprobs_and_grads(lm, prompts, ids, mask, None, shared=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(lm.model)
        lm.model.zero_grad(set_to_none=True)
        logp, _ = completion_logprobs(
            ddp, lm.adapter, prompts, ids, mask, on_path(lm.adapter, True), with_entropy=False, group_size=G
        )
        weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids)
        (logp * mask * weights).sum().backward()
    finally:
        dist.destroy_process_group()
    assert ((logp.detach() * mask) - plain_logp).abs().max() < 1e-5
    assert_grads_close(plain_grads, {n: p.grad for n, p in lm.model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "gemma3", "phi3_v"])
def test_fused_prefill_samples_and_scores_as_two_passes_do(family, family_dirs, data, caplog):
    """One pass of the prompts (with gradient) for sampling and the loss equals a pass for each:
    the same tokens, sampler log-probs, loss and gradients (Gemma 3: sliding-window cache layers)."""
    lm = load(family_dirs(family))
    lm.model.train()  # as in training: the kept pass must be the loss's own
    examples = data.train[:B]
    images = [e.load_image() for e in examples]
    grpo = GRPOConfig(num_generations=G, max_completion_length=4, beta=0.0)
    tower = next(
        m for n, m in lm.model.named_modules() if n.split(".")[-1] in ("visual", "vision_tower", "vision_embed_tokens")
    )
    encodes = []
    hook = tower.register_forward_hook(lambda *_: encodes.append(1))
    results = {}
    fused = choose_plan(lm.model, lm.adapter, grpo)
    assert fused.fused
    for keep in (False, True):
        torch.manual_seed(0)
        encodes.clear()
        plan = fused if keep else replace(fused, loss="shared prefix")
        ro, prefill = make_rollout_and_prefill(
            lm.model, lm.adapter, lm.processor, examples, images, grpo, RewardConfig(), CPU, plan
        )
        assert (prefill is not None) == keep and lm.model.training
        ro.advantages = torch.tensor([1.0, -1.0, 0.5, 0.3, 0.2, -0.7, 1.5, 0.4])
        lm.model.zero_grad(set_to_none=True)
        loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo, prefix=prefill)
        loss.backward()
        assert len(encodes) == (1 if keep else 2)  # the images (and prompts) run once per step, or twice
        results[keep] = (
            ro,
            loss.detach(),
            {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None},
        )
    hook.remove()
    (ro_two, loss_two, grads_two), (ro_one, loss_one, grads_one) = results[False], results[True]
    assert torch.equal(ro_one.completion_ids, ro_two.completion_ids)
    assert (ro_one.sampling_logprobs - ro_two.sampling_logprobs).abs().max() < 1e-6
    assert abs(float(loss_one - loss_two)) < 1e-6 and float(loss_two) != 0.0
    assert grads_one.keys() == grads_two.keys() and any("visual" in n or "vision" in n for n in grads_one)
    assert_grads_close(grads_two, grads_one)


def test_gradient_checkpointing_keeps_two_prompt_passes_and_a_grpo_step_runs(tiny_model_dir, data, caplog):
    lm = load(tiny_model_dir, gradient_checkpointing=True)
    lm.model.train()
    grpo = GRPOConfig(num_generations=G, max_completion_length=3)
    assert plan_module.fused_prefill_reason(lm.model, lm.adapter, grpo) == "gradient checkpointing drops the KV cache"
    plan = choose_plan(lm.model, lm.adapter, grpo)
    assert (plan.sampling, plan.loss) == ("shared prefix", "plain")
    examples = data.train[:B]
    ro, prefill = make_rollout_and_prefill(
        lm.model,
        lm.adapter,
        lm.processor,
        examples,
        [e.load_image() for e in examples],
        grpo,
        RewardConfig(),
        CPU,
        plan,
    )
    assert prefill is None and ro.sampled_on_prefix  # sampled from a shared prefix; the loss runs the plain path
    ro.advantages = torch.linspace(-1, 1, B * G)
    loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in lm.model.parameters() if p.grad is not None)


def test_extending_a_static_cache_passes_the_growth_check():
    # A static layer's get_seq_length is a tensor the forward grows in place: read before and
    # after as ints (3 -> 5), else "before" would have grown too and the check would refuse.
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    model, cache = LlamaForCausalLM(config).eval(), StaticCache(config=config, max_cache_len=8)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **{prefix.cache_argument(model): cache})
        shared = prefix.Prefix(cache, None, torch.ones(1, 3, dtype=torch.long), torch.tensor([3]), "linear")
        logits = shared.extend(model, torch.tensor([[4, 5]]))
    assert (int(cache.get_seq_length()), shared.attention_mask.shape, logits.shape) == (5, (1, 5), (1, 2, 16))
