"""grpo.generation_backend=vllm against a real vLLM engine: vLLM's CPU build (vllm-cpu 0.32, V1
engine, in this process) serving the tiny Qwen2-VL of the other tests (random weights, fp32).

These run in .venv-vllm (``bash scripts/setup_vllm_cpu.sh``, then ``bash scripts/test_vllm_cpu.sh``)
and are skipped in the main venv, which has no vllm. What they show: VLLMSampler's samples follow
the transformers path's conventions; vLLM's raw log-probs of its samples equal the trainer's
(temperature 1) to within LOGP_TOL; a weight push (LoRA merged) reaches the engine; and a GRPO run
through the CLI samples with vLLM and logs the importance weights.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os

import pytest
import torch

pytest.importorskip(
    "vllm",
    reason="vllm is not installed here: the real-engine tests run in .venv-vllm "
    "(bash scripts/setup_vllm_cpu.sh && bash scripts/test_vllm_cpu.sh)",
)

from plans import for_run

from vqa_grpo.data.prompts import user_texts  # noqa: E402  (after the importorskip)
from vqa_grpo.models.plan import PLAIN

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: an explicit KV cache, not a share of the host's memory
# The trainer's side runs the shared prefix (the default): vllm-cpu 0.32 pins transformers < 5.20,
# whose forward takes the cache as ``past_key_values`` (models/prefix.cache_argument).

CPU = torch.device("cpu")
B, G, MAX_TOKENS = 4, 4, 16
# |log pi_vllm - log pi_trainer| of a sampled token, both raw (temperature 1) and fp32. Measured
# on vllm-cpu 0.32 with the tiny Qwen2-VL (bash scripts/test_vllm_cpu.sh -s prints them): 9.5e-7
# at most over the 256 sampled tokens of the log-prob test, 4e-6 to 5e-6 over the greedy tokens
# after the pushes of perturbed and of LoRA weights. (It grows with the weights' scale: 4.9e-5
# with noise of std 0.2 instead of 0.1 added to every weight.)
LOGP_TOL = 1e-4


def make_config(synth_dir, model_dir, out, **model):
    from vqa_grpo.config import Config, DataConfig, GRPOConfig, ModelConfig, TrainConfig

    return Config(
        model=ModelConfig(name_or_path=str(model_dir), **model),
        data=DataConfig(path=str(synth_dir)),
        train=TrainConfig(output_dir=str(out), per_device_batch_size=B, device="cpu", cpu_threads=1, progress=False),
        grpo=GRPOConfig(num_generations=G, max_completion_length=MAX_TOKENS, vllm_max_model_len=512),
    )


# ---- 4. a GRPO run through the CLI (first: it starts and drops its own engine) ----------------------


def test_grpo_run_through_the_cli_samples_with_vllm(synth_dir, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from vqa_grpo.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            f"model.name_or_path={tiny_model_dir}",
            f"data.path={synth_dir}",
            f"train.output_dir={out}",
            "train.device=cpu",
            "train.max_steps=4",
            "train.per_device_batch_size=2",
            "train.learning_rate=0.01",
            "train.save_steps=2",
            "train.progress=false",
            "grpo.num_generations=4",
            "grpo.max_completion_length=8",
            "grpo.generation_backend=vllm",
            "grpo.vllm_sync_steps=2",
            "grpo.vllm_max_model_len=512",
        ]
    )
    gc.collect()  # the run's engine
    assert code == 0, capsys.readouterr().err[-2000:]
    assert {"config.yaml", "metrics.jsonl", "completions.jsonl", "final", "checkpoint-2", "checkpoint-4"} <= {
        p.name for p in out.iterdir()
    }
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    w = [r["is_weight_mean"] for r in rows]
    print(f"\nis_weight_mean per step (pushes before steps 1 and 3): {w}")
    # Steps 1 and 3 sample right after a push: vLLM and the trainer hold the same weights. Steps 2
    # and 4 sample from the weights of one optimiser step before (lr 0.01): the ratios move off 1.
    assert abs(w[0] - 1) < LOGP_TOL and abs(w[2] - 1) < LOGP_TOL
    assert abs(w[1] - 1) > 10 * LOGP_TOL and abs(w[3] - 1) > 10 * LOGP_TOL


# ---- one engine for the rest ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(synth_dir, tiny_model_dir, tmp_path_factory):
    from vqa_grpo.grpo.vllm_backend import VLLMSampler

    cfg = make_config(synth_dir, tiny_model_dir, tmp_path_factory.mktemp("vllm") / "run")
    sampler = VLLMSampler(cfg)
    yield cfg, sampler
    del sampler
    gc.collect()


@pytest.fixture(scope="module")
def batch(synth_dir):
    from vqa_grpo.config import DataConfig
    from vqa_grpo.data.loader import load_vqa
    from vqa_grpo.training.batches import Batches

    data = load_vqa(DataConfig(path=str(synth_dir)), seed=0)
    return Batches(data.train, B, seed=0).next()  # (examples, images)


def vllm_sample(engine, lm, batch, temps, top_ps):
    """G completions of each question from the engine, as the rollout asks for them."""
    from vqa_grpo.grpo.rollout import _sample_with_vllm

    cfg, sampler = engine
    examples, images = batch
    return _sample_with_vllm(
        sampler, lm.model, lm.adapter, lm.processor, user_texts(examples), images, cfg.grpo, temps, top_ps, CPU
    )


def trainer_logprobs(lm, batch, ids, mask, images=None):
    """The trainer's raw (temperature 1) log-probs of the completions, [R, C] (vqa_grpo.models.scoring)."""
    from vqa_grpo.models.scoring import completion_logprobs

    examples, batch_images = batch
    a = lm.adapter
    prompts = a.encode_prompts(lm.processor, images or batch_images, user_texts(examples))
    with torch.no_grad():
        logp, _ = completion_logprobs(
            lm.model, a, a.repeat(prompts, ids.shape[0] // len(examples)), ids, mask, PLAIN, None, with_entropy=False
        )
    return logp * mask


def seed_params(cfg):
    from vqa_grpo.models.processors import row_sampling_params

    return row_sampling_params(B, G, cfg.grpo.temperatures, cfg.grpo.top_ps)


def greedy(engine, lm, batch):
    """One greedy completion per question from the engine (temperature 0): ids, mask, raw log-probs."""
    ones = torch.ones(B)
    cfg, sampler = engine
    examples, images = batch
    texts = [lm.adapter.prompt_text(lm.processor, t) for t in user_texts(examples)]
    s = sampler.sample(
        texts,
        images,
        1,
        torch.zeros(B),
        ones,
        MAX_TOKENS,
        lm.adapter.stop_token_ids(lm.processor, lm.model),
        lm.adapter.suppressed_token_ids(lm.processor),
    )
    return s.ids, s.mask, s.logprobs


def trainer_greedy(lm, batch):
    """The trainer's greedy completions (transformers' generate), cut at the first stop token."""
    from vqa_grpo.models.generation import generate

    examples, images = batch
    prompts = lm.adapter.encode_prompts(lm.processor, images, user_texts(examples))
    with torch.no_grad():
        comp = generate(lm.model, lm.adapter, lm.processor, prompts, PLAIN, max_new_tokens=MAX_TOKENS, do_sample=False)
    return comp.ids * comp.mask, comp.mask


def same_tokens(ids_a, mask_a, ids_b, mask_b) -> bool:
    """Equal completions, ignoring the padding columns one side has more of."""
    C = max(ids_a.shape[1], ids_b.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, C - t.shape[1]))
    return torch.equal(pad(ids_a * mask_a), pad(ids_b * mask_b)) and torch.equal(pad(mask_a), pad(mask_b))


# ---- 1. the samples ------------------------------------------------------------------------------


def test_samples_follow_the_transformers_paths_conventions(engine, batch):
    from vqa_grpo.models.generation import completion_mask
    from vqa_grpo.models.loading import load_model

    cfg, sampler = engine
    lm = load_model(cfg.model, CPU)
    sampler.push_weights(lm.model)
    temps, top_ps = seed_params(cfg)
    comp, logp = vllm_sample(engine, lm, batch, temps, top_ps)
    R, C = comp.ids.shape
    lengths = comp.mask.sum(1)
    assert R == B * G and C == int(lengths.max()) <= MAX_TOKENS
    # Right-padded (pad id 0 under a zero mask); cut after the first stop token, the stop token
    # kept; a row without one is truncated at MAX_TOKENS: exactly what the transformers path's
    # completion_mask makes of the same ids.
    stop_ids = lm.adapter.stop_token_ids(lm.processor, lm.model)
    mask, truncated = completion_mask(comp.ids, stop_ids)
    assert torch.equal(mask, comp.mask) and torch.equal(truncated, comp.truncated)
    assert torch.equal(comp.mask, (torch.arange(C)[None, :] < lengths[:, None]).long())
    assert (comp.ids[comp.mask == 0] == 0).all()
    assert (lengths[comp.truncated] == MAX_TOKENS).all()
    assert comp.truncated.any() and not comp.truncated.all()  # both kinds of row in this batch
    # Image and vision-delimiter tokens are never sampled (random weights give them the same odds as any word).
    suppressed = torch.tensor(lm.adapter.suppressed_token_ids(lm.processor))
    assert len(suppressed) == 4 and not torch.isin(comp.ids[comp.mask.bool()], suppressed).any()
    # Raw log-probs on the completion tokens, 0 on padding; the G copies of a question differ.
    assert (logp[comp.mask.bool()] < 0).all() and (logp[~comp.mask.bool()] == 0).all()
    assert len({tuple(r) for r in comp.ids[:G].tolist()}) > 1


# ---- 2. vLLM's log-probs against the trainer's --------------------------------------------------------


def test_vllm_raw_logprobs_equal_the_trainers_and_the_weights_are_one(engine, batch):
    from vqa_grpo.models.loading import load_model
    from vqa_grpo.training.batches import Batches
    from vqa_grpo.training.steps import make_rollouts

    cfg, sampler = engine
    lm = load_model(cfg.model, CPU)
    sampler.push_weights(lm.model)
    temps, top_ps = seed_params(cfg)
    comp, logp = vllm_sample(engine, lm, batch, temps, top_ps)
    m = comp.mask.bool()
    ours = trainer_logprobs(lm, batch, comp.ids, comp.mask)
    gap = (ours - logp)[m].abs().max().item()
    print(f"\nmax |log pi_trainer - log pi_vllm| over {int(m.sum())} sampled tokens: {gap:.2e}")
    assert gap < LOGP_TOL
    # The images reach vLLM: against other images the trainer's log-probs are far off vLLM's.
    _, images = batch
    other = trainer_logprobs(lm, batch, comp.ids, comp.mask, images=images[1:] + images[:1])
    assert (other - logp)[m].abs().max().item() > 100 * LOGP_TOL
    # Through the rollout (training/steps.make_rollouts): every importance weight is 1 within the same tolerance.
    examples, images = batch
    pending = make_rollouts(cfg, lm, None, Batches([*examples], B, seed=0), CPU, for_run(cfg, lm), sampler)
    (ro,) = pending.rollouts
    w = ro.is_weights[ro.completion_mask.bool()]
    assert w.numel() > 0 and (w - 1).abs().max().item() < LOGP_TOL


# ---- 3. weight pushes ----------------------------------------------------------------------------------


def test_a_push_puts_the_trainers_new_weights_into_the_engine(engine, batch):
    from vqa_grpo.models.loading import load_model

    cfg, sampler = engine
    lm = load_model(cfg.model, CPU)
    sampler.push_weights(lm.model)
    before = greedy(engine, lm, batch)
    assert same_tokens(*trainer_greedy(lm, batch), before[0], before[1])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    new_ids, new_mask = trainer_greedy(lm, batch)
    assert not same_tokens(new_ids, new_mask, before[0], before[1])
    stale = greedy(engine, lm, batch)  # not pushed yet: the engine still holds the old weights
    assert same_tokens(*stale[:2], *before[:2])
    sampler.push_weights(lm.model)
    ids, mask, logp = greedy(engine, lm, batch)
    assert same_tokens(ids, mask, new_ids, new_mask)
    gap = (trainer_logprobs(lm, batch, ids, mask) - logp)[mask.bool()].abs().max().item()
    print(
        f"\nafter the push: max |log pi_trainer - log pi_vllm| over {int(mask.sum())} greedy tokens: {gap:.2e} "
        f"(log-probs down to {logp[mask.bool()].min():.1f})"
    )
    assert gap < LOGP_TOL


def test_a_push_with_lora_sends_the_merged_weights_and_leaves_the_adapters(engine, batch):
    from vqa_grpo.models.loading import load_model

    cfg, sampler = engine
    lm = load_model(dataclasses.replace(cfg.model, lora=True, lora_r=4), CPU)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:  # zero at the start: the adapters would change nothing
                p.normal_(0, 0.2)
    base = {n: p.detach().clone() for n, p in lm.model.named_parameters() if "base_layer" in n}
    assert base
    ids_lora, mask_lora = trainer_greedy(lm, batch)
    with lm.model.disable_adapter():
        ids_base, mask_base = trainer_greedy(lm, batch)
    assert not same_tokens(ids_lora, mask_lora, ids_base, mask_base)
    sampler.push_weights(lm.model)
    ids, mask, logp = greedy(engine, lm, batch)
    assert same_tokens(ids, mask, ids_lora, mask_lora)
    gap = (trainer_logprobs(lm, batch, ids, mask) - logp)[mask.bool()].abs().max().item()
    print(
        f"\nafter the LoRA push: max |log pi_trainer - log pi_vllm| over {int(mask.sum())} greedy tokens: {gap:.2e} "
        f"(log-probs down to {logp[mask.bool()].min():.1f})"
    )
    assert gap < LOGP_TOL
    # The trainer's model is unmerged again: its base weights as before, the adapters still separate.
    assert all(torch.equal(p, base[n]) for n, p in lm.model.named_parameters() if n in base)
    assert same_tokens(*trainer_greedy(lm, batch), ids_lora, mask_lora)


def test_check_device_names_the_builds_device():
    from vqa_grpo.errors import UserError
    from vqa_grpo.grpo.vllm_backend import check_device

    check_device(CPU)  # vllm-cpu
    with pytest.raises(UserError) as e:
        check_device(torch.device("cuda"))
    assert str(e.value) == (
        "grpo.generation_backend=vllm: the installed vLLM runs on cpu, this run is on cuda; "
        "set train.device=cpu or grpo.generation_backend=transformers"
    )
