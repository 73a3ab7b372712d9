"""Prioritised sampling (grpo.prioritized_sampling; training/priority.py, docs/sampling.md): the
weighting by hand, the floor, seeded draws that favour medium difficulty, a real GRPO run whose
draws replay from its own rewards and resume bitwise, and the bad settings refused by the CLI."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from test_loop import config, resume_overrides, train_records, weights

from vqa_grpo.cli import main
from vqa_grpo.config import RewardConfig
from vqa_grpo.data.loader import load_vqa
from vqa_grpo.data.types import BadExample, VQAExample
from vqa_grpo.rewards.registry import reward_range
from vqa_grpo.training import loop
from vqa_grpo.training.batches import Batches
from vqa_grpo.training.priority import Priorities, difficulty, ema, priority_weights


def examples(n: int, bad: tuple[int, ...] = ()) -> list[VQAExample]:
    """``n`` questions q0..q{n-1} on a drawn 8x8 image; those in ``bad`` fail to decode."""

    def broken():
        raise BadExample("corrupt_image", "truncated file")

    return [
        VQAExample(f"q{i}", "what?", ["a"], "a", image_loader=broken if i in bad else lambda: Image.new("RGB", (8, 8)))
        for i in range(n)
    ]


def priorities(n: int, floor: float = 0.1, decay: float = 0.5, seed: int = 0) -> Priorities:
    return Priorities([f"q{i}" for i in range(n)], floor, decay, 0.0, 1.0, seed)  # rewards in [0, 1]


def assert_user_error(rc: int, err: str) -> None:
    """Exit 2 and one line "error: ..." (tests/test_cli.py's contract)."""
    assert rc == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err


def drawn_ids(batches: Batches, n_batches: int) -> list[str]:
    return [ex.id for _ in range(n_batches) for ex in batches.next()[0]]


# ---- the weighting, by hand ---------------------------------------------------------------------


def test_the_weighting_by_hand():
    # composite weight 1 in [0, 1], abstention weight 0.5 in [-1, 1]: the total is in [-0.5, 1.5]
    assert reward_range(RewardConfig(components=["composite", "abstention"], weights=[1.0, 0.5])) == (-0.5, 1.5)
    assert reward_range(RewardConfig(components=["vqa_accuracy", "format"], weights=[1.0, 0.2])) == (0.0, 1.2)
    # p = (r + 0.5) / 2: not seen -> 1/2; -0.5 -> 0; 0.5 -> 1/2; 1.5 -> 1; 1.0 -> 3/4; 3.0 -> 1 (clamped)
    p = difficulty(torch.tensor([math.nan, -0.5, 0.5, 1.5, 1.0, 3.0], dtype=torch.float64), -0.5, 1.5)
    assert p.tolist() == [0.5, 0.0, 0.5, 1.0, 0.75, 1.0]
    # 0.1 + 0.9 * 4p(1-p): 4p(1-p) = 1, 0, 1, 0, 3/4, 0
    assert priority_weights(p, 0.1).tolist() == pytest.approx([1.0, 0.1, 1.0, 0.1, 0.775, 0.1], abs=1e-15)
    assert priority_weights(p, 1.0).tolist() == [1.0] * 6  # floor 1: uniform
    assert ema(None, 0.8, 0.5) == 0.8 and ema(0.8, 0.2, 0.5) == 0.5 and ema(0.8, 0.2, 0.0) == 0.2


def test_observations_build_each_questions_ema_and_the_checkpoint_state():
    pr = priorities(3, decay=0.5)
    pr.observe(["q0", "q2"], [1.0, 0.25])
    pr.observe(["q0"], [0.5])  # 0.5 * 1.0 + 0.5 * 0.5
    assert pr.state() == {"draws": 0, "seen": {"q0": [0.75, 2], "q2": [0.25, 1]}}
    # p = 0.75, 1/2 (not seen), 0.25: 4p(1-p) = 3/4, 1, 3/4 -> weights 0.775, 1, 0.775 of 2.55
    probs = pr.probabilities(torch.zeros(3, dtype=torch.bool))
    assert probs.tolist() == pytest.approx([0.775 / 2.55, 1 / 2.55, 0.775 / 2.55], abs=1e-15)
    assert pr.stats(torch.zeros(3, dtype=torch.bool)) == pytest.approx(
        {
            "priority/weight_max_over_min": 1 / 0.775,
            "priority/entropy": float(-(probs * probs.log()).sum()) / math.log(3),
            "priority/seen_fraction": 2 / 3,
        },
        abs=1e-12,
    )
    again = priorities(3, decay=0.5)
    again.restore(json.loads(json.dumps(pr.state())))  # through the checkpoint's JSON, exactly
    assert torch.equal(again.weights(), pr.weights()) and again.state() == pr.state()


def test_no_question_falls_below_the_floor():
    # 49 questions always solved (p = 1, weight = floor) and one solved half the time (weight 1):
    # each of the 49 has 0.05 / (49 * 0.05 + 1) = 0.05 / 3.45, just above floor / N = 0.05 / 50.
    pr = priorities(50, floor=0.05)
    pr.observe([f"q{i}" for i in range(1, 50)], [1.0] * 49)
    pr.observe(["q0"], [0.5])
    probs = pr.probabilities(torch.zeros(50, dtype=torch.bool))
    assert probs[1:].tolist() == pytest.approx([0.05 / 3.45] * 49, abs=1e-15)
    assert float(probs.min()) >= 0.05 / 50 and float(probs.sum()) == pytest.approx(1.0, abs=1e-15)
    generator = torch.Generator().manual_seed(1)
    rewards = torch.rand(50, generator=generator, dtype=torch.float64)  # any mix of difficulties
    pr.observe([f"q{i}" for i in range(50)], rewards.tolist())
    assert float(pr.probabilities(torch.zeros(50, dtype=torch.bool)).min()) >= 0.05 / 50


# ---- the draws ----------------------------------------------------------------------------------


def test_the_draws_favour_medium_difficulty_and_repeat_for_a_seed():
    # 30 questions: q0-q9 never solved, q10-q19 solved half the time, q20-q29 always solved.
    # Weights 0.1, 1, 0.1: the medium ten hold 10 / (10 + 20 * 0.1) = 5/6 of the probability.
    def run(seed: int) -> list[str]:
        batches = Batches(examples(30), 4, seed, priorities=priorities(30, seed=seed))
        batches.observe([f"q{i}" for i in range(30)], [0.0] * 10 + [0.5] * 10 + [1.0] * 10)
        return drawn_ids(batches, 150)

    ids = run(seed=0)
    medium = sum(10 <= int(q[1:]) < 20 for q in ids) / len(ids)
    # a batch draws without replacement, which lowers the medium share a little below 5/6
    assert 0.75 < medium < 5 / 6, medium
    assert len(set(ids)) == 30  # every question still visited (the floor)
    assert run(seed=0) == ids and run(seed=1) != ids


def test_a_failed_image_is_met_once_and_a_small_set_repeats_within_a_batch():
    batches = Batches(examples(3, bad=(2,)), 2, seed=0, priorities=priorities(3))
    ids = drawn_ids(batches, 10)
    # q2 (weight 1, like the others) failed the first time it was drawn and was never drawn again
    assert batches.skipped == 1 and set(batches.bad) == {"q2"} and "q2" not in ids
    assert all(sorted(ids[k : k + 2]) == ["q0", "q1"] for k in range(0, 20, 2))  # distinct within a batch
    # a batch larger than the decodable questions repeats them, each pass over them without replacement
    big = [ex.id for ex in Batches(examples(3, bad=(2,)), 5, 0, priorities=priorities(3)).next()[0]]
    assert sorted(big[:2]) == sorted(big[2:4]) == ["q0", "q1"]


# ---- two processes ------------------------------------------------------------------------------

RANK = textwrap.dedent(
    """
    import json, sys
    import torch
    from PIL import Image
    from vqa_grpo.data.types import VQAExample
    from vqa_grpo.training.batches import Batches
    from vqa_grpo.distributed import make_dist
    from vqa_grpo.training.priority import Priorities

    dist = make_dist("cpu")
    ids = [f"q{i}" for i in range(20)]
    examples = [VQAExample(q, "what?", ["a"], "a", image_loader=lambda: Image.new("RGB", (8, 8))) for q in ids]
    batches = Batches(examples, 2, 0, dist.rank, dist.world, Priorities(ids, 0.1, 0.5, 0.0, 1.0, 0, dist.gather_lists))
    drawn = []
    for _ in range(6):
        mine = [ex.id for ex in batches.next()[0]]
        batches.observe(mine, [int(q[1:]) % 5 / 4 for q in mine])  # q0, q5, ...: 0; q2, q7, ...: 1/2
        drawn.append(mine)
    print(json.dumps({"drawn": drawn, "state": batches.state()}), flush=True)
    torch.distributed.destroy_process_group()  # left to exit, gloo's threads may abort the process
    """
)


def test_two_processes_gather_the_rewards_and_keep_one_state(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    done = [p.communicate(timeout=120) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), [err[-1500:] for _, err in done]
    rank0, rank1 = (json.loads(out.splitlines()[-1]) for out, _ in done)
    assert rank0["state"] == rank1["state"]  # both processes took in every group, in rank order
    assert sum(n for _, n in rank0["state"]["priority"]["seen"].values()) == 24  # 6 steps x 2 ranks x 2
    # one process of batch 4, fed the same rewards, draws the same global batches: rank 0's half, then rank 1's
    one = Batches(examples(20), 4, 0, priorities=priorities(20))
    for step in range(6):
        batch = [ex.id for ex in one.next()[0]]
        assert batch == rank0["drawn"][step] + rank1["drawn"][step]
        one.observe(batch, [int(q[1:]) % 5 / 4 for q in batch])
    assert one.state() == rank0["state"]


# ---- a real run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prioritized_run(synth_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prioritized") / "run"
    cfg = config(synth_dir, tiny_model_dir, out, *resume_overrides("grpo"), "grpo.prioritized_sampling=true")
    loop.run(cfg, "grpo")
    return cfg, out


def test_a_run_draws_by_its_own_rewards_and_logs_the_distribution(prioritized_run):
    cfg, out = prioritized_run
    groups = [json.loads(s) for s in (out / "completions.jsonl").read_text().splitlines()]
    assert [g["step"] for g in groups] == [1, 1, 2, 2, 3, 3, 4, 4]
    # Replay: the same data order, priorities fed the logged group means (4 decimals), give the same questions.
    data = load_vqa(cfg.data, seed=cfg.train.seed)
    replay = Batches(data.train, 2, cfg.train.seed, priorities=Priorities.for_run(cfg, [e.id for e in data.train]))
    for step in (1, 2, 3, 4):
        drawn = [ex.id for ex in replay.next()[0]]
        assert drawn == [g["id"] for g in groups if g["step"] == step]
        replay.observe(drawn, [sum(g["rewards"]) / 2 for g in groups if g["step"] == step])
    saved = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["data"]["priority"]
    assert saved["draws"] == 4 and sum(n for _, n in saved["seen"].values()) == 8
    for q, (mean, _) in replay.priorities.state()["seen"].items():
        assert saved["seen"][q][0] == pytest.approx(mean, abs=1e-4)
    lines = train_records(out)
    seen = [len({g["id"] for g in groups if g["step"] <= step}) / len(data.train) for step in (1, 2, 3, 4)]
    assert [r["priority/seen_fraction"] for r in lines] == seen
    assert all(r["priority/weight_max_over_min"] >= 1 and 0 < r["priority/entropy"] <= 1 for r in lines)


@pytest.mark.slow
def test_a_prioritized_run_resumes_bitwise(prioritized_run, synth_dir, tiny_model_dir, tmp_path):
    cfg, full = prioritized_run
    out = tmp_path / "resumed"
    overrides = [*resume_overrides("grpo"), "grpo.prioritized_sampling=true", f"train.resume={full / 'checkpoint-2'}"]
    loop.run(config(synth_dir, tiny_model_dir, out, *overrides), "grpo")
    state = [json.loads((d / "checkpoint-4" / "trainer_state.json").read_text())["data"] for d in (full, out)]
    assert state[0] == state[1]  # the priorities: each EMA, count and the draws
    assert train_records(out) == train_records(full)[2:]  # the priority/* figures too
    a, b = weights(full / "final"), weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def level(completions, id, **kwargs) -> list[float]:
    """A reward set by the question alone: id % 3 = 0 is never solved (0), 1 half the time (1/2), 2 always (1)."""
    return [int(q) % 3 / 2 for q in id]


def test_a_real_run_draws_the_medium_questions_most(synth_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [f"model.name_or_path={tiny_model_dir}", f"data.path={synth_dir}", f"train.output_dir={out}"]
    args += ["train.device=cpu", "train.cpu_threads=1", "train.progress=false", "data.eval_fraction=0"]
    args += ["data.max_train_samples=12", "train.max_steps=12", "train.save_steps=12", "train.per_device_batch_size=4"]
    args += ["grpo.num_generations=2", "grpo.max_completion_length=2", "grpo.prioritized_sampling=true"]
    assert main(["train", *args, "reward.components=[test_prioritized_sampling:level]"]) == 0, capsys.readouterr().err
    groups = [json.loads(s) for s in (out / "completions.jsonl").read_text().splitlines()]
    ids = [g["id"] for g in groups]
    questions = sorted(set(ids))
    assert len(ids) == 48 and len(questions) == 12  # the floor: every question drawn
    saved = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["data"]["priority"]
    assert {q: m for q, (m, _) in saved["seen"].items()} == {q: int(q) % 3 / 2 for q in questions}
    # With m medium questions of 12, weights 1 against 0.1: m / (m + 0.1 (12 - m)) of each draw
    # (10/11 for m = 6), a little less as a batch draws without replacement; uniform draws give m / 12.
    medium = {q for q in questions if int(q) % 3 == 1}
    later = ids[16:]  # steps 5-12, when every question has been seen
    share = sum(q in medium for q in later) / len(later)
    m = len(medium)
    assert share > 0.85 * m / (m + 0.1 * (12 - m)) and share > m / 12 + 0.25, (m, share)


# ---- bad settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, says",
    [
        ("grpo.priority_floor=0", "grpo.priority_floor=0.0: must be in (0, 1]"),
        ("grpo.priority_floor=1.5", "grpo.priority_floor=1.5: must be in (0, 1]"),
        ("grpo.priority_decay=1", "grpo.priority_decay=1.0: must be in [0, 1)"),
        ("grpo.priority_decay=-0.1", "grpo.priority_decay=-0.1: must be in [0, 1)"),
    ],
)
def test_bad_priority_settings_are_refused_in_one_line(setting, says, capsys, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "grpo.prioritized_sampling=true", setting, f"train.output_dir={out}"])
    err = capsys.readouterr().err
    assert_user_error(rc, err)
    assert says in err and not out.exists()
