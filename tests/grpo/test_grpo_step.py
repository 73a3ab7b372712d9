"""One GRPO optimisation step on the tiny Qwen2-VL, and a 2-step run of the shared training loop.

No mocks. A random tiny model earns almost no reward, so most tests sample a real rollout with
tests/plans.py ``rollout`` (or the loop's ``_make_rollouts``) and then overwrite its rewards with
hand-set values, recomputing the advantages with ``group_advantages`` exactly as a rollout does:
the completions, masks and log-probs stay those the model really sampled.

Shapes: B = 2 questions, G = 4 completions each, R = 8 rows, C completion tokens.
"""

import json

import pytest
import torch
from plans import for_run, rollout

from vqa_grpo.config import Config, DataConfig, GRPOConfig, ModelConfig, RewardConfig, TrainConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.benchmarks import resolve as resolve_benchmark
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.grpo import group_advantages
from vqa_grpo.grpo.logprobs import Reference
from vqa_grpo.grpo.rollout import answer_nll, grpo_objective, rollout_logprobs
from vqa_grpo.models.loading import load_model
from vqa_grpo.models.plan import PLAIN
from vqa_grpo.models.scoring import answer_ids, completion_logprobs
from vqa_grpo.training.batches import Batches
from vqa_grpo.training.loop import run
from vqa_grpo.training.optim import make_optimizer
from vqa_grpo.training.steps import Pending
from vqa_grpo.training.steps import grpo_backward as _grpo_backward
from vqa_grpo.training.steps import make_rollouts as _make_rollouts

CPU = torch.device("cpu")
B, G = 2, 4
VARIED = [1.0, 0.0, 0.5, 0.0, 0.0, 0.2, 0.0, 1.0]  # both groups have different rewards
FLAT = [1.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.3]  # equal within each group (not across groups)


@pytest.fixture(scope="module")
def data(synth_dir):
    return load_vqa(DataConfig(path=str(synth_dir)), seed=0)


def load(tiny_model_dir, **model):
    return load_model(ModelConfig(name_or_path=str(tiny_model_dir), **model), CPU)


@pytest.fixture
def lm(tiny_model_dir):
    """A fresh copy of the tiny model for each test (the tests train it)."""
    return load(tiny_model_dir)


def config(synth_dir, tiny_model_dir, tmp_path, **grpo) -> Config:
    return Config(
        model=ModelConfig(name_or_path=str(tiny_model_dir)),
        data=DataConfig(path=str(synth_dir)),
        train=TrainConfig(
            output_dir=str(tmp_path / "run"),
            per_device_batch_size=B,
            learning_rate=1e-3,
            device="cpu",
            cpu_threads=1,
            progress=False,
        ),
        grpo=GRPOConfig(num_generations=G, max_completion_length=4, **grpo),
    )


def set_rewards(ro, rewards, scale="group"):
    """Hand-set rewards [R] on a sampled rollout; advantages recomputed as a rollout does."""
    ro.rewards = torch.tensor(rewards)
    ro.advantages = group_advantages(ro.rewards, ro.group_size, scale=scale)
    return ro


def sample(lm, data, grpo: GRPOConfig, seed=0):
    examples = data.train[:B]
    torch.manual_seed(seed)
    return rollout(
        lm.model, lm.adapter, lm.processor, examples, [e.load_image() for e in examples], grpo, RewardConfig(), CPU
    )


def grad_norm(model) -> float:
    grads = [p.grad.double() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------
# One step


@pytest.mark.parametrize("rewards, changes", [(VARIED, True), (FLAT, False)], ids=["varied", "flat"])
def test_one_step_changes_every_parameter_iff_rewards_vary_within_a_group(lm, data, rewards, changes):
    grpo = GRPOConfig(num_generations=G, max_completion_length=4)  # beta = 0: no KL term
    ro = set_rewards(sample(lm, data, grpo), rewards)
    assert (ro.advantages != 0).any() == changes  # FLAT: every advantage exactly 0
    before = trainable(lm.model)
    opt = make_optimizer(lm.model.parameters(), TrainConfig(learning_rate=1e-3))
    loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
    loss.backward()
    opt.step()
    after = trainable(lm.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    if changes:  # vision tower, merger, embeddings, every layer: all moved
        assert sorted(changed) == sorted(before)
    else:  # zero advantages give exactly zero gradients; AdamW then moves nothing
        assert changed == []


def test_seed_formula_has_no_gradient_on_a_real_model(lm, data, synth_dir, tiny_model_dir, tmp_path):
    # The same rollout through the loop's backward with loss_type "grpo" and then "seed".
    # Rewards whose normalised group means are float32 rounding residues (about -3e-8 and
    # +6e-8 here, not cancelling), so the seed's loss is "zero" the way it is in practice.
    grpo_cfg = config(synth_dir, tiny_model_dir, tmp_path)
    seed_cfg = config(synth_dir, tiny_model_dir, tmp_path, loss_type="seed_report")
    ro = set_rewards(sample(lm, data, grpo_cfg.grpo), [0.1, 0.7, 0.3, 0.9, 0.13, 0.71, 0.29, 0.97])

    _grpo_backward(grpo_cfg, lm, Pending([ro]))
    grpo_norm = grad_norm(lm.model)
    lm.model.zero_grad(set_to_none=True)
    stats = _grpo_backward(seed_cfg, lm, Pending([ro]))
    seed_norm = grad_norm(lm.model)

    assert stats["lm_loss"] > 1.0  # the prompt's LM loss itself is large (random model) ...
    assert grpo_norm > 1e-3  # ... GRPO learns from these rewards ...
    assert seed_norm < 1e-6 * grpo_norm  # ... and the seed's factor -mean(normalised r) ~ 0 kills it


# ----------------------------------------------------------------------------------------------
# num_iterations, reference model, hybrid SFT term


def test_second_iteration_takes_the_ratio_against_the_rollout_policy(lm, data, synth_dir, tiny_model_dir, tmp_path):
    cfg = config(synth_dir, tiny_model_dir, tmp_path, num_iterations=2)
    pending = _make_rollouts(cfg, lm, None, Batches(data.train, B, seed=0), CPU, for_run(cfg, lm))
    (ro,) = pending.rollouts
    assert ro.old_logprobs is not None and ro.ref_logprobs is None  # beta = 0: no reference pass
    set_rewards(ro, VARIED)
    opt = make_optimizer(lm.model.parameters(), cfg.train)

    # Iteration 1: the policy is the rollout policy, every ratio exactly 1.
    logp, _ = rollout_logprobs(lm.model, lm.adapter, ro)
    assert torch.equal(logp.detach(), ro.old_logprobs)
    first = _grpo_backward(cfg, lm, pending)
    assert pending.iteration == 1 and first["ratio_mean"] == 1.0 and first["clip_fraction"] == 0.0
    opt.step()
    opt.zero_grad(set_to_none=True)

    # Iteration 2: same rollout, moved policy; old_logprobs did not move with it.
    second = _grpo_backward(cfg, lm, pending)
    assert pending.iteration == cfg.grpo.num_iterations  # the loop then samples anew
    assert abs(second["ratio_mean"] - 1.0) > 1e-4
    logp, _ = rollout_logprobs(lm.model, lm.adapter, ro)
    assert (logp.detach() - ro.old_logprobs)[ro.completion_mask.bool()].abs().max() > 1e-3

    # With num_iterations = 1 no old log-probs are kept (the objective uses logp.detach()).
    cfg1 = config(synth_dir, tiny_model_dir, tmp_path)
    assert (
        _make_rollouts(cfg1, lm, None, Batches(data.train, B, seed=0), CPU, for_run(cfg1, lm)).rollouts[0].old_logprobs
        is None
    )


@pytest.mark.parametrize("lora", [False, True], ids=["frozen_copy", "lora_disabled"])
def test_kl_to_the_reference_is_zero_at_step_0_and_positive_after_a_step(
    data, synth_dir, tiny_model_dir, tmp_path, lora
):
    cfg = config(synth_dir, tiny_model_dir, tmp_path, beta=0.1)
    cfg.model.lora = lora
    lm = load(tiny_model_dir, lora=lora)
    assert Reference.for_run(config(synth_dir, tiny_model_dir, tmp_path), lm.model) is None  # beta = 0: none
    ref = Reference.for_run(cfg, lm.model)
    if lora:  # the base model with the adapters switched off: no second copy
        assert ref.copy is None
    else:
        assert ref.copy is not lm.model and not ref.copy.training
        assert all(not p.requires_grad for p in ref.copy.parameters())
        ref_before = {n: p.clone() for n, p in ref.copy.named_parameters()}
    batches = Batches(data.train, B, seed=0)
    opt = make_optimizer(lm.model.parameters(), cfg.train)

    pending = _make_rollouts(cfg, lm, ref, batches, CPU, for_run(cfg, lm))
    set_rewards(pending.rollouts[0], VARIED)
    assert pending.rollouts[0].ref_logprobs is not None
    at_start = _grpo_backward(cfg, lm, pending)
    assert at_start["kl"] == 0.0  # policy == reference: k3 = exp(0) - 0 - 1 = 0 on every token
    opt.step()
    opt.zero_grad(set_to_none=True)

    pending = _make_rollouts(cfg, lm, ref, batches, CPU, for_run(cfg, lm))
    set_rewards(pending.rollouts[0], VARIED)
    after = _grpo_backward(cfg, lm, pending)
    assert after["kl"] > 1e-6
    if not lora:  # the step moved the policy, not the frozen reference
        assert all(torch.equal(ref_before[n], p) for n, p in ref.copy.named_parameters())


def test_sft_coef_adds_lambda_times_the_answer_nll(lm, data):
    grpo = GRPOConfig(num_generations=G, max_completion_length=4)
    ro = set_rewards(sample(lm, data, grpo), VARIED)
    plain, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
    hybrid_cfg = GRPOConfig(num_generations=G, max_completion_length=4, sft_coef=0.5)
    hybrid, stats = grpo_objective(lm.model, lm.adapter, lm.processor, ro, hybrid_cfg)
    nll = answer_nll(lm.model, lm.adapter, lm.processor, ro).detach()
    assert float(nll) > 1.0 and stats["sft_nll"] == pytest.approx(float(nll), abs=1e-6)
    assert float((hybrid - plain).detach()) == pytest.approx(0.5 * float(nll), abs=1e-6)

    # answer_nll is the token mean of -log p(answer tokens, then the stop token | prompt, image):
    # the same number as the model's own cross-entropy with labels on those tokens only.
    stop = lm.adapter.stop_token_ids(lm.processor, lm.model)[0]
    ids, mask = answer_ids(lm.processor.tokenizer, [e.answer for e in ro.examples], stop)  # [B, A]
    full = lm.adapter.append(ro.prompts, ids, mask)
    labels = torch.cat([torch.full_like(ro.prompts.input_ids, -100), ids.masked_fill(mask == 0, -100)], dim=1)
    with torch.no_grad():
        hf = lm.model(**full.model_inputs(), labels=labels, use_cache=False).loss
    assert float(nll) == pytest.approx(float(hf), abs=1e-5)


# ----------------------------------------------------------------------------------------------
# The forward pass under left padding


def test_completion_logprobs_do_not_depend_on_padding(lm, data):
    # Prompts of different lengths (a short and a long question, and a larger image for the
    # second: 36 instead of 16 image tokens), batched with left padding, against each alone.
    short = next(e for e in data.train if e.question == "How many objects are there?")
    long = next(e for e in data.train if "left or right" in e.question)
    images = [short.load_image(), long.load_image().resize((168, 168))]
    batch = lm.adapter.encode_prompts(lm.processor, images, [short.question, long.question])
    assert (batch.attention_mask == 0).any()  # the short prompt is padded
    tok = lm.processor.tokenizer
    words = [tok.convert_tokens_to_ids(w) for w in ("blue", "red", "circles", "left", "no")]
    assert tok.unk_token_id not in words
    ids = torch.tensor([words, words[:2] + [tok.pad_token_id] * 3])  # [2, 5], right-padded
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    temps = torch.tensor([0.7, 1.3])
    with torch.no_grad():
        logp, ent = completion_logprobs(lm.model, lm.adapter, batch, ids, mask, PLAIN, temps)  # [2, 5]
        for i, (im, q) in enumerate([(images[0], short.question), (images[1], long.question)]):
            alone = lm.adapter.encode_prompts(lm.processor, [im], [q])
            n = int(mask[i].sum())
            logp_i, ent_i = completion_logprobs(
                lm.model, lm.adapter, alone, ids[i : i + 1, :n], mask[i : i + 1, :n], PLAIN, temps[i : i + 1]
            )
            assert torch.allclose(logp[i, :n], logp_i[0], atol=1e-5), i
            assert torch.allclose(ent[i, :n], ent_i[0], atol=1e-5), i


# ----------------------------------------------------------------------------------------------
# Two steps of the training loop


@pytest.fixture(scope="module")
def grpo_run(synth_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_run")
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.path={synth_dir}",
            "data.max_eval_samples=2",
            f"train.output_dir={out}",
            "train.max_steps=2",
            f"train.per_device_batch_size={B}",
            "train.learning_rate=1e-3",
            "train.device=cpu",
            "train.cpu_threads=1",
            "train.progress=false",
            f"grpo.num_generations={G}",
            "grpo.max_completion_length=4",
            "eval.max_new_tokens=4",
            "eval.batch_size=2",
        ],
    )
    return cfg, run(cfg, "grpo")


@pytest.mark.slow
def test_grpo_run_writes_config_metrics_and_a_loadable_model(grpo_run, tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg, result = grpo_run
    assert result.steps == 2 and result.final_dir == result.run_dir / "final"
    assert load_config(result.run_dir / "config.yaml") == resolve_benchmark(cfg)

    lines = [json.loads(s) for s in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "eval/vqa_accuracy" not in x]
    assert [x["step"] for x in steps] == [1, 2]
    logged = {
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "advantage_abs_mean",
        "kl",
        "clip_fraction",
        "ratio_mean",
        "completion_length",
        "truncated_fraction",
        "entropy",
        "loss",
        "grad_norm",
        "lr",
    }
    for x in steps:
        assert logged <= set(x), logged - set(x)
        assert 0 <= x["frac_reward_zero_std"] <= 1 and 0 < x["completion_length"] <= 4
        assert x["kl"] == 0.0  # beta = 0
    assert any("eval/vqa_accuracy" in x for x in lines)  # the final evaluation

    model = AutoModelForImageTextToText.from_pretrained(result.final_dir)
    AutoProcessor.from_pretrained(result.final_dir)
    start = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    final = model.state_dict()
    assert final.keys() == start.keys()
    # A step with a nonzero gradient moves the weights; with all-zero advantages it cannot.
    moved = any(not torch.equal(final[k], start[k]) for k in start)
    assert moved == any(x["grad_norm"] > 0 for x in steps)


@pytest.mark.slow
def test_grpo_run_logs_sampled_completions(grpo_run):
    _, result = grpo_run
    rows = [json.loads(s) for s in (result.run_dir / "completions.jsonl").read_text().splitlines()]
    # Every sampled group of each logged step (logging_steps=1): its question, references, G raw
    # and cleaned answers, their rewards and advantages.
    assert [r["step"] for r in rows] == [1] * B + [2] * B
    for r in rows:
        assert r["question"] and r["answers"]
        assert len(r["raw"]) == len(r["completions"]) == len(r["rewards"]) == len(r["advantages"]) == G
        assert r["completions"] == [c.strip().splitlines()[0].strip() if c.strip() else "" for c in r["raw"]]
        assert all(0.0 <= x <= 1.0 for x in r["rewards"])


def test_pending_hands_each_prefill_to_one_step_only():
    first = object()
    pending = Pending(rollouts=["a", "b"], prefills=[first, None])
    assert pending.take_prefills() == [first, None]
    assert pending.take_prefills() == [None, None]  # a reused step runs the prompts again
    assert Pending(rollouts=["a"]).take_prefills() == [None]  # built without prefills
