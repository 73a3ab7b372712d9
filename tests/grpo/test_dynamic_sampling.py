"""DAPO's dynamic sampling (grpo/dynamic.py, training/steps.py make_rollouts): the group filter and
the packing by hand, the extra draws on the tiny Qwen2-VL with a reward that decides by hand which
questions keep a spread, the gradient of a packed (and a short) step against one batch of the kept
groups, bitwise resume, and the bad-input lines.

The reward ``spread_by_id`` scores a completion 1 at odd positions of the batch and 0 at even ones
for the questions whose id ends in an even digit, and 0 throughout for the others: the first kind
keeps a spread in every group of G = 2, the second has none.
"""

import json
from pathlib import Path

import pytest
import torch
from plans import for_run

from vqa_grpo.cli import main
from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.grpo.dynamic import equal_rewards, keep_groups, pack, take_groups
from vqa_grpo.models.loading import load_model
from vqa_grpo.rewards.user import resolve
from vqa_grpo.training import loop
from vqa_grpo.training.batches import Batches
from vqa_grpo.training.steps import Pending, grpo_backward, make_rollouts

CPU = torch.device("cpu")


def spreads(example_id: str) -> bool:
    return int(example_id[-1]) % 2 == 0


def spread_by_id(completions, id, **kwargs):
    return [float(i % 2) if spreads(q) else 0.0 for i, q in enumerate(id)]


# ---- the filter and the packing, by hand -------------------------------------------------------


def test_keep_groups_needs_a_spread_and_a_mean_within_the_bounds():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 2.0, 0.0])  # G = 2: means 0.5, 1, 0.5, 1
    assert keep_groups(rewards, 2, 0.0, 1.0) == [True, False, False, True]
    assert keep_groups(rewards, 2, 0.0, 0.6) == [True, False, False, False]  # mean 1 > 0.6
    # two components of weight 1 each (range 0 to 2): the scaled means are 0.25, 0.5, 0.25, 0.5
    assert keep_groups(rewards, 2, 0.3, 1.0, bounds=(0.0, 2.0)) == [False, False, False, True]
    assert equal_rewards(rewards, 2).tolist() == [False, True, True, False]


def test_a_signed_reward_keeps_every_group_with_a_spread_at_the_default_bounds():
    """reward.components=[abstention] scores in [-1, 1]: [1, -1, -1, -1] has a mean of -0.5, which
    the bounds (0, 1) keep; a scaled mean (mean + 1) / 2 of 0.25 is what a filter_low acts on."""
    from types import SimpleNamespace

    from vqa_grpo.rewards.registry import reward_range

    abstention = SimpleNamespace(components=["abstention"], weights=None)
    assert reward_range(abstention) == (-1.0, 1.0)
    assert reward_range(SimpleNamespace(components=["composite", "abstention"], weights=[1.0, 0.5])) == (-0.5, 1.5)
    assert reward_range(SimpleNamespace(components=None, weights=None)) == (0.0, 1.0)
    rewards = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 0.0])  # G = 4
    assert keep_groups(rewards, 4, 0.0, 1.0, bounds=(-1.0, 1.0)) == [True, False, True]
    assert keep_groups(rewards, 4, 0.3, 1.0, bounds=(-1.0, 1.0)) == [False, False, True]  # 0.25, 0.875
    assert keep_groups(rewards, 4, 0.2, 0.8, bounds=(-1.0, 1.0)) == [True, False, False]


def test_pack_a_full_step_keeps_the_plain_factors_and_drops_the_surplus():
    kept = [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]  # 5 kept, 4 needed
    p = pack(kept, [(0, 0)], per_micro=2, micro_batches=2, kept_all=4)
    assert p.micro == [[(0, 1), (1, 0)], [(1, 1), (2, 0)]]
    assert (p.weights, p.surplus) == (None, 1)


def test_pack_a_short_step_weighs_by_groups_and_fills_with_zero_weight():
    # 3 kept here, 7 over 2 processes: micro-batch weights 2 x 2/7 and 2 x 1/7, one filler at 0
    p = pack([(0, 0), (0, 1), (1, 1)], [(1, 0), (2, 0)], per_micro=2, micro_batches=3, kept_all=7, world=2)
    assert p.micro == [[(0, 0), (0, 1)], [(1, 1)], [(1, 0)]]
    assert p.weights == [4 / 7, 2 / 7, 0.0]
    # none kept anywhere: every micro-batch a filler, no gradient
    p = pack([], [(0, 0), (0, 1)], per_micro=1, micro_batches=2, kept_all=0)
    assert (p.micro, p.weights) == ([[(0, 0)], [(0, 1)]], [0.0, 0.0])


# ---- the step on the tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(synth_dir, tiny_model_dir, tmp_path_factory):
    data = load_vqa(load_config(None, [f"data.path={synth_dir}"]).data, seed=0)
    lm = load_model(load_config(None, [f"model.name_or_path={tiny_model_dir}"]).model, CPU)
    return data, lm


def step_config(tmp_path, rounds=4, accumulation=2, **extra):
    overrides = [
        f"train.output_dir={tmp_path}",
        "train.per_device_batch_size=2",
        f"train.gradient_accumulation_steps={accumulation}",
        "grpo.num_generations=2",
        "grpo.max_completion_length=3",
        "grpo.dynamic_sampling=true",
        f"grpo.max_resample_rounds={rounds}",
        "reward.components=[spread]",
        "reward.python_functions=[spread]",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(None, overrides)


def expected_draws(data, batch, draws):
    """The ids of the next ``draws`` batches of a fresh Batches in the same order."""
    b = Batches(data.train, batch, seed=0)
    return [[e.id for e in b.next()[0]] for _ in range(draws)]


def rollouts_of(cfg, lm, data):
    batches = Batches(data.train, 2, seed=0)
    torch.manual_seed(0)
    funcs = resolve(["spread"], {"spread": spread_by_id})
    pending = make_rollouts(cfg, lm, None, batches, CPU, for_run(cfg, lm), reward_funcs=funcs)
    return pending, batches


def test_a_step_draws_until_it_holds_its_groups_and_keeps_them_in_order(setup, tmp_path):
    data, lm = setup
    pending, batches = rollouts_of(step_config(tmp_path), lm, data)
    ids = [i for d in expected_draws(data, 2, 6) for i in d]
    kept = [i for i in ids if spreads(i)]
    # rounds: each draws ceil(missing / 2) micro-batches of 2 until 4 groups are kept
    used, rounds = 2, 0
    while (kept_n := sum(map(spreads, ids[: 2 * used]))) < 4:
        used, rounds = used + -(-(4 - kept_n) // 2), rounds + 1
    assert [[e.id for e in ro.examples] for ro in pending.rollouts] == [kept[:2], kept[2:4]]
    assert pending.weights is None and batches.pos == 2 * used
    s = pending.stats
    assert s["dynamic/rounds"] == rounds and s["dynamic/micro_batches_drawn"] == used
    assert s["dynamic/groups_sampled"] == 2 * used
    assert s["dynamic/groups_kept"] == 4 and s["dynamic/short"] == 0.0
    assert s["dynamic/groups_surplus"] == sum(map(spreads, ids[: 2 * used])) - 4
    assert s["frac_reward_zero_std"] == 1 - sum(map(spreads, ids[: 2 * used])) / (2 * used)
    assert s["dynamic/completions_per_kept_group"] == 2 * 2 * used / 4
    for ro in pending.rollouts:  # every kept group's two completions score 0 and 1: advantages -/+
        assert ro.rewards.tolist() == [0.0, 1.0] * 2 and (ro.advantages[1::2] > 0).all()


def test_at_the_bound_the_step_trains_on_fewer_groups(setup, tmp_path):
    data, lm = setup
    pending, batches = rollouts_of(step_config(tmp_path, rounds=1), lm, data)
    ids = [i for d in expected_draws(data, 2, 3) for i in d]
    kept = [i for i in ids if spreads(i)]
    assert len(kept) < 4, "the synthetic order changed: pick a draw budget that leaves the step short"
    n = len(kept)
    assert pending.stats["dynamic/short"] == 1.0 and pending.stats["dynamic/groups_kept"] == n
    assert batches.pos == 6 and len(pending.rollouts) == 2
    expected = {0: [0.0, 0.0], 1: [1.0, 0.0], 2: [1.0, 0.0], 3: [2 / 3, 1 / 3]}[n]  # 2 a micro-batch; 0: fillers
    assert pending.weights == expected
    assert [len(ro.examples) for ro, w in zip(pending.rollouts, expected) if w] == [2, 1][: (n + 1) // 2]


def test_a_step_that_keeps_no_group_has_a_zero_gradient(setup, tmp_path):
    data, lm = setup
    cfg = step_config(tmp_path, rounds=1, **{"reward.components": "[flat]", "reward.python_functions": "[flat]"})
    funcs = resolve(["flat"], {"flat": lambda completions, **kw: [0.5] * len(completions)})
    pending = make_rollouts(cfg, lm, None, Batches(data.train, 2, seed=0), CPU, for_run(cfg, lm), reward_funcs=funcs)
    assert pending.weights == [0.0, 0.0] and pending.trained() == []
    assert (pending.stats["dynamic/groups_kept"], pending.stats["dynamic/short"]) == (0, 1.0)
    lm.model.zero_grad(set_to_none=True)
    stats = grpo_backward(cfg, lm, pending)
    # the fillers' statistics (every process logs the same keys), a loss of 0, and the share
    # outcomes.watch_equal_rewards reads
    assert (stats["loss"], stats["reward"], stats["frac_reward_zero_std"], stats["advantage_abs_mean"]) == (
        0,
        0.5,
        1,
        0,
    )
    assert all(g.abs().sum() == 0 for g in grads(lm))


def grads(lm) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in lm.model.parameters()]


# a full step, a short one, and a short one of Dr. GRPO's constant normaliser
@pytest.mark.parametrize("rounds, loss_type", [(4, "grpo"), (1, "grpo"), (1, "dr_grpo")])
def test_the_packed_step_has_the_gradient_of_one_batch_of_its_kept_groups(setup, tmp_path, rounds, loss_type):
    data, lm = setup
    cfg = step_config(tmp_path, rounds=rounds, **{"grpo.loss_type": loss_type})
    pending, _ = rollouts_of(cfg, lm, data)
    real = [ro for ro, w in zip(pending.rollouts, pending.weights or [1, 1]) if w != 0]
    lm.model.zero_grad(set_to_none=True)
    stats = grpo_backward(cfg, lm, pending)
    packed = grads(lm)
    picks = [(i, b) for i, ro in enumerate(real) for b in range(len(ro.examples))]
    one = take_groups(real, picks, lm.adapter, lm.processor, _texts(cfg), "group")
    lm.model.zero_grad(set_to_none=True)
    one_stats = grpo_backward(cfg, lm, Pending([one]))
    whole = grads(lm)
    torch.testing.assert_close(stats["loss"], one_stats["loss"])  # the objective it back-propagates
    assert any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(packed, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert stats["frac_reward_zero_std"] == pending.stats["frac_reward_zero_std"]
    lm.model.zero_grad(set_to_none=True)


def test_a_packed_micro_batch_carries_its_rows_flags_and_every_rollouts_reward_time(setup, tmp_path):
    from dataclasses import replace

    data, lm = setup
    cfg = step_config(tmp_path)
    pending, _ = rollouts_of(cfg, lm, data)
    a, b = pending.rollouts
    a = replace(a, bad_input_rows=[0, 2, 0, 0], reward_seconds={"spread": 0.25}, augmented=[None, "jpeg:2"] * 2)
    b = replace(b, bad_input_rows=[1, 0, 0, 0], reward_seconds={"spread": 0.5}, augmented=[])
    one = take_groups([a, b], [(0, 0), (1, 0)], lm.adapter, lm.processor, _texts(cfg), "group")
    assert one.bad_input_rows == [0, 2, 1, 0] and one.bad_reward_inputs == 3
    assert one.reward_seconds == {"spread": 0.75} and one.augmented == [None, "jpeg:2"]


def test_a_dynamic_step_counts_every_completion_it_sampled(setup, tmp_path):
    """One token per completion (max_completion_length=1): the step's completion_tokens are the
    rows of every micro-batch drawn, not of the trained ones alone."""
    data, lm = setup
    pending, _ = rollouts_of(step_config(tmp_path, **{"grpo.max_completion_length": 1}), lm, data)
    s = pending.stats
    assert s["completion_tokens"] == 2 * s["dynamic/groups_sampled"] == 2 * 2 * s["dynamic/micro_batches_drawn"]
    assert s["dynamic/micro_batches_drawn"] > 2 and "augment/share" not in s


def test_prioritized_sampling_draws_no_question_twice_in_a_step(setup, tmp_path):
    """3 questions, 3 micro-batches of 1 a step: the step holds each once; the next step starts afresh."""
    from vqa_grpo.training.priority import Priorities

    data, lm = setup
    overrides = ["train.per_device_batch_size=1", "train.gradient_accumulation_steps=3", "grpo.num_generations=2"]
    cfg = load_config(None, [*overrides, "grpo.max_completion_length=1", "grpo.prioritized_sampling=true"])
    three = data.train[:3]
    batches = Batches(three, 1, seed=0, priorities=Priorities.for_run(cfg, [e.id for e in three]))
    for _ in range(2):
        pending = make_rollouts(cfg, lm, None, batches, CPU, for_run(cfg, lm))
        assert sorted(ro.examples[0].id for ro in pending.rollouts) == sorted(e.id for e in three)
    assert batches.priorities.draws == 6


def _texts(cfg):
    from vqa_grpo.data.prompts import prompt_template, user_texts

    template = prompt_template(cfg.data, cfg.reward.reasoning)
    return lambda ex: user_texts(ex, template)


# ---- a run, and its resume ---------------------------------------------------------------------


def run_config(synth_dir, model_dir, out, *more):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"data.path={synth_dir}",
            f"train.output_dir={out}",
            "train.device=cpu",
            "train.cpu_threads=1",
            "train.progress=false",
            "train.eval_steps=0",
            "data.max_eval_samples=4",
            "eval.max_new_tokens=4",
            "eval.batch_size=4",
            "train.max_steps=4",
            "train.save_steps=2",
            "train.per_device_batch_size=2",
            "train.learning_rate=1e-3",
            "grpo.num_generations=2",
            "grpo.max_completion_length=4",
            "grpo.sft_coef=0.5",
            "grpo.dynamic_sampling=true",
            "grpo.max_resample_rounds=2",
            *more,
        ],
    )


def step_lines(out: Path) -> list[dict]:
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    timings = ("step_seconds", "rollout_seconds", "completion_tokens_per_second", "rss_mib")
    return [{k: v for k, v in r.items() if k not in timings and "memory" not in k} for r in lines if "loss" in r]


def test_a_dynamic_run_resumes_bitwise(synth_dir, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    full = tmp_path / "full"
    loop.run(run_config(synth_dir, tiny_model_dir, full), "grpo")
    lines = step_lines(full)
    assert [r["dynamic/groups_sampled"] for r in lines] == [2 + r["dynamic/rounds"] * 2 for r in lines]
    assert all(0 <= r["frac_reward_zero_std"] <= 1 for r in lines)
    assert any(r["dynamic/rounds"] > 0 for r in lines[2:])  # the resumed steps drew more than their share
    out = tmp_path / "resumed"
    loop.run(run_config(synth_dir, tiny_model_dir, out, f"train.resume={full / 'checkpoint-2'}"), "grpo")
    a, b = load_file(full / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert step_lines(out) == lines[2:]


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["grpo.dynamic_sampling=true", "grpo.filter_low=1.5"], "need 0 <= filter_low <= filter_high <= 1"),
        (["grpo.dynamic_sampling=true", "grpo.filter_low=0.8", "grpo.filter_high=0.2"], "filter_low <= filter_high"),
        (["grpo.dynamic_sampling=true", "grpo.max_resample_rounds=0"], "needs >= 1 resampling round per step"),
        (["grpo.max_resample_rounds=-1"], "grpo.max_resample_rounds acts only with grpo.dynamic_sampling"),
        (["grpo.filter_high=0.9"], "set grpo.dynamic_sampling=true"),
        (["grpo.priority_decay=0.9"], "grpo.priority_decay acts only with grpo.prioritized_sampling: set"),
        (
            ["grpo.augment_schedule=linear_decay"],
            "grpo.augment_schedule acts only with grpo.augment: set grpo.augment=",
        ),
        (["grpo.dynamic_sampling=true", "grpo.loss_type=seed_report"], "choose another grpo.loss_type"),
    ],
)
def test_bad_dynamic_sampling_settings_exit_2_with_one_line(
    overrides, says, synth_dir, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    paths = [f"model.name_or_path={tiny_model_dir}", f"data.path={synth_dir}", f"train.output_dir={out}"]
    rc = main(["train", *paths, *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert says in err and not out.exists()
