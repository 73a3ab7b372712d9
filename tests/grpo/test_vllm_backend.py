"""The vLLM generation backend's pure parts and wiring, in the main venv (no vllm installed): the
one-line error that names the extra, ``collate`` fed stand-ins of vLLM's ``CompletionOutput``
(token_ids, logprobs as one {token: Logprob} dict per step, finish_reason), named as such, and
the rollout and step wiring with a stand-in engine. The real engine (vLLM's CPU build) runs in
tests/grpo/test_vllm_real.py under scripts/test_vllm_cpu.sh.
"""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch
from plans import for_run

from vqa_grpo.cli import main
from vqa_grpo.grpo.vllm_backend import collate, truncated_is_weights
from vqa_grpo.models.plan import PLAIN

NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")


def standin_output(tokens: list[int], logprobs: list[float], finish: str):
    """A stand-in of vllm.CompletionOutput with the fields collate reads."""
    steps = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, logprobs)]
    return SimpleNamespace(token_ids=tokens, logprobs=steps, finish_reason=finish)


@NO_VLLM
def test_train_with_vllm_missing_is_one_line_naming_the_extra(synth_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            f"model.name_or_path={tiny_model_dir}",
            f"data.path={synth_dir}",
            f"train.output_dir={out}",
            "grpo.generation_backend=vllm",
            "train.progress=false",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == (
        "error: grpo.generation_backend=vllm needs vLLM: pip install 'vqa-grpo[vllm]' on a CUDA machine "
        "(scripts/setup_vllm_cpu.sh for its CPU build), or set grpo.generation_backend=transformers"
    )
    assert not out.exists()  # nothing half-written


def test_collate_right_pads_and_marks_truncation():
    s = collate(
        [
            standin_output([5, 7, 2], [-0.5, -1.0, -0.25], "stop"),
            standin_output([9], [-2.0], "stop"),
            standin_output([4, 4, 4], [-0.1, -0.2, -0.3], "length"),
        ],
        max_tokens=3,
    )
    assert s.ids.tolist() == [[5, 7, 2], [9, 0, 0], [4, 4, 4]]
    assert s.mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1]]
    assert s.truncated.tolist() == [False, False, True]
    expected = [[-0.5, -1.0, -0.25], [-2.0, 0.0, 0.0], [-0.1, -0.2, -0.3]]
    assert [row == pytest.approx(e, abs=1e-7) for row, e in zip(s.logprobs.tolist(), expected)] == [True] * 3


def test_truncated_importance_weights_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]])
    sampler = torch.tensor([[-1.0, -1.0, -2.0], [-0.2, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = truncated_is_weights(old, sampler, mask, cap=2.0)
    expected = [
        [1.0, math.exp(-1.0), 2.0],  # equal; pi_old lower; exp(1.5) = 4.48 capped at 2
        [math.exp(0.1), math.exp(-2.5), 0.0],
    ]  # the padding position weighs nothing
    torch.testing.assert_close(w, torch.tensor(expected), rtol=1e-6, atol=0)
    assert not w.requires_grad


# ---- the wiring, with a stand-in engine ----------------------------------------------------------


class StandInEngine:
    """Stands in for VLLMSampler (vLLM cannot run here): samples with transformers' generate on the
    trainer's own model at each row's temperature and top-p, and returns the trainer's raw
    (temperature 1) log-probs of those tokens plus ``drift(R, C)``, as an engine whose numerics
    differ from the trainer's would."""

    def __init__(self, lm, drift=lambda R, C: torch.zeros(R, C)):
        self.lm, self.drift, self.pushes = lm, drift, []

    def push_weights(self, model) -> None:
        self.pushes.append(model)

    def sample(self, texts, images, group_size, temps, top_ps, max_tokens, stop_ids, suppressed_ids):
        from transformers import LogitsProcessorList

        from vqa_grpo.grpo.vllm_backend import Samples
        from vqa_grpo.models.adapters import PromptBatch
        from vqa_grpo.models.generation import generate
        from vqa_grpo.models.processors import RowwiseTemperatureTopP
        from vqa_grpo.models.scoring import completion_logprobs

        a = self.lm.adapter
        enc = self.lm.processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
        prompts = PromptBatch(
            enc["input_ids"],
            enc["attention_mask"],
            {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")},
        )
        comp = generate(
            self.lm.model,
            a,
            self.lm.processor,
            a.repeat(prompts, group_size),
            PLAIN,
            max_new_tokens=max_tokens,
            do_sample=True,
            logits_processor=LogitsProcessorList([RowwiseTemperatureTopP(temps, top_ps)]),
            keep_scores=True,
        )
        with torch.no_grad():
            logp, _ = completion_logprobs(
                self.lm.model, a, a.repeat(prompts, group_size), comp.ids, comp.mask, PLAIN, None, with_entropy=False
            )
        return Samples(comp.ids, comp.mask, comp.truncated, (logp + self.drift(*comp.ids.shape)) * comp.mask)


def tiny_setup(synth_dir, tiny_model_dir, tmp_path, **grpo):
    from vqa_grpo.config import Config, DataConfig, GRPOConfig, ModelConfig, TrainConfig
    from vqa_grpo.data.loader import load_vqa
    from vqa_grpo.models.loading import load_model

    cfg = Config(
        model=ModelConfig(name_or_path=str(tiny_model_dir)),
        data=DataConfig(path=str(synth_dir)),
        train=TrainConfig(
            output_dir=str(tmp_path / "run"), per_device_batch_size=2, device="cpu", cpu_threads=1, progress=False
        ),
        grpo=GRPOConfig(num_generations=4, max_completion_length=4, **grpo),  # the seed's temperatures and top-ps
    )
    return cfg, load_model(cfg.model, "cpu"), load_vqa(cfg.data, seed=0)


def test_vllm_samples_are_weighted_by_pi_old_over_pi_sampler(synth_dir, tiny_model_dir, tmp_path):
    from vqa_grpo.training.batches import Batches
    from vqa_grpo.training.steps import Pending, grpo_backward, make_rollouts

    cfg, lm, data = tiny_setup(synth_dir, tiny_model_dir, tmp_path)
    torch.manual_seed(0)
    drift = lambda R, C: 0.1 * torch.arange(R)[:, None] - 0.2 * torch.arange(C)[None, :]  # per row and token
    pending = make_rollouts(
        cfg, lm, None, Batches(data.train, 2, seed=0), torch.device("cpu"), for_run(cfg, lm), StandInEngine(lm, drift)
    )
    (ro,) = pending.rollouts
    m = ro.completion_mask.bool()
    # The stand-in reports the trainer's raw log-probs shifted by drift: pi_old / pi_sampler =
    # exp(-drift) on each completion token (capped at 2), 0 on padding, whatever the rows'
    # temperatures (0.7-1.0) and top-ps (0.8-0.95).
    assert ro.old_logprobs is not None and m.any() and len(set(ro.temperatures.tolist())) == 4
    expected = torch.exp(-drift(*m.shape)).clamp(max=2.0)
    torch.testing.assert_close(ro.is_weights[m], expected[m], rtol=1e-4, atol=0)
    assert (ro.is_weights[~m] == 0).all()
    # With a constant drift of 0.3 the surrogate's gradient is exp(-0.3) x the plain one (the KL is off).
    ro.is_weights = torch.full_like(ro.is_weights, math.exp(-0.3)) * m
    ro.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])
    grads, stats = [], []
    for weights in (ro.is_weights, None):
        ro.is_weights = weights
        lm.model.zero_grad(set_to_none=True)
        stats.append(grpo_backward(cfg, lm, Pending([ro])))
        grads.append(torch.cat([p.grad.flatten() for p in lm.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], math.exp(-0.3) * grads[1], rtol=1e-3, atol=1e-7)
    assert stats[0]["is_weight_mean"] == pytest.approx(math.exp(-0.3), rel=1e-4) and "is_weight_mean" not in stats[1]


def test_weights_are_pushed_every_vllm_sync_steps(synth_dir, tiny_model_dir, tmp_path):
    from vqa_grpo.training.batches import Batches
    from vqa_grpo.training.steps import GRPOSteps

    cfg, lm, data = tiny_setup(synth_dir, tiny_model_dir, tmp_path, vllm_sync_steps=2)
    engine = StandInEngine(lm)
    steps = GRPOSteps(None, None, lm, for_run(cfg, lm), vllm=engine)
    batches = Batches(data.train, 2, seed=0)
    pushed = []
    for step in range(5):
        before = len(engine.pushes)
        steps.step(cfg, lm, batches, torch.device("cpu"), step)
        pushed.append(len(engine.pushes) > before)
    assert pushed == [True, False, True, False, True]
    assert engine.pushes[0] is lm.model


def test_policy_loss_weights_the_surrogate_not_the_kl_by_hand():
    from vqa_grpo.grpo.math import policy_loss

    logp = torch.tensor([[-1.0, -2.0]])  # ratio 1 everywhere (old = logp)
    ref = torch.tensor([[-1.5, -2.0]])
    w = torch.tensor([[0.5, 2.0]])
    loss, _ = policy_loss(
        logp,
        logp.clone(),
        torch.tensor([1.0]),
        torch.ones(1, 2),
        ref_logprobs=ref,
        beta=0.1,
        token_weights=w,
        loss_type="bnpo",
    )
    k3 = math.exp(-0.5) + 0.5 - 1  # exp(d) - d - 1 with d = ref - logp = -0.5 on token 1, 0 on token 2
    expected = ((-1.0 * 0.5 + 0.1 * k3) + (-1.0 * 2.0 + 0.0)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
