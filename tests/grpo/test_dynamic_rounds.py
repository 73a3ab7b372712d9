"""DAPO's dynamic sampling's rounds (grpo/dynamic.py fill_step) on stand-in rollouts whose rewards
are set by hand: a round refills the whole step whatever the accumulation, and two processes (real
Dist over gloo) draw until both are full and weigh a short step together."""

import json
import os

import pytest
import torch

# ---- one process ---------------------------------------------------------------------------------


def fake_draws(groups: list[list[float]], size: int):
    """draw() of rollouts of ``size`` groups (G = 2) taken in turn from ``groups``."""
    from types import SimpleNamespace

    it = iter(groups)

    def draw():
        gs = [next(it) for _ in range(size)]
        return SimpleNamespace(rewards=torch.tensor(sum(gs, [])), group_size=2, examples=gs)

    return draw


def test_a_round_draws_what_the_step_lacks_whatever_the_accumulation():
    """The same 4 groups a step as 4 micro-batches of 1 or 1 of 4: a round refills the step."""
    from vqa_grpo.config import GRPOConfig
    from vqa_grpo.distributed import DDP
    from vqa_grpo.grpo.dynamic import fill_step

    S, F = [0.0, 1.0], [1.0, 1.0]
    groups = [S, F, F, F, S, S, S, F]
    grpo = GRPOConfig(num_generations=2, dynamic_sampling=True, max_resample_rounds=1)
    out = {}
    for per_micro, micro in ((1, 4), (4, 1)):
        filled = fill_step(
            fake_draws(groups, per_micro),
            lambda ro: ro,
            lambda r, p: p,
            grpo=grpo,
            bounds=(0.0, 1.0),
            per_micro=per_micro,
            micro_batches=micro,
            dist=DDP(),
        )
        out[per_micro] = filled.stats(grpo.num_generations)
        assert filled.weights is None  # full: one round brought the 3 missing groups
    assert [(s["dynamic/rounds"], s["dynamic/groups_kept"], s["dynamic/short"]) for s in out.values()] == [
        (1, 4, 0)
    ] * 2
    assert [(s["dynamic/micro_batches_drawn"], s["dynamic/groups_sampled"]) for s in out.values()] == [(7, 7), (2, 8)]


# ---- two processes agree on the draws ----------------------------------------------------------

AGREE = """
import json, os, sys
from types import SimpleNamespace
import torch
from vqa_grpo.config import GRPOConfig
from vqa_grpo.grpo.dynamic import fill_step
from vqa_grpo.distributed import make_dist

S, F = [0.0, 1.0], [0.0, 0.0]  # a group of G = 2 with a spread, and one without
DRAWS = {0: [[S, S], [S, S], [S, F], [S, S]], 1: [[F, F], [S, F], [F, S], [S, S]]}
dist = make_dist("cpu")
out = {}
for rounds in (3, 0):
    batches = iter(DRAWS[dist.rank])

    def draw():
        groups = next(batches)
        return SimpleNamespace(rewards=torch.tensor(sum(groups, [])), group_size=2, examples=groups)

    filled = fill_step(
        draw,
        lambda ro: "whole" if isinstance(ro, SimpleNamespace) else ro,
        lambda rollouts, picks: picks,
        grpo=GRPOConfig(num_generations=2, dynamic_sampling=True, max_resample_rounds=rounds),
        bounds=(0.0, 1.0), per_micro=2, micro_batches=2, dist=dist,
    )
    out[rounds] = {"rollouts": filled.rollouts, "weights": filled.weights, "stats": filled.stats(2)}
open(sys.argv[1] + f".{dist.rank}", "w").write(json.dumps(out))
dist.barrier()
torch.distributed.destroy_process_group()
"""


def agree_rank(rank: int, port: int, folder) -> None:
    """One rank of AGREE, in a forked child: its stderr to ``folder``/err.RANK, its output to out.RANK."""
    err = os.open(folder / f"err.{rank}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(err, 2)
    import sys

    sys.stderr = open(2, "w", closefd=False)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    os.environ.update({**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
    sys.argv = ["agree.py", str(folder / "out")]
    exec(compile(AGREE, "agree.py", "exec"), {"__name__": "__main__"})


@pytest.mark.slow
def test_two_processes_draw_until_both_are_full_and_weigh_a_short_step_together(tmp_path):
    """Rank 0 is full after its 2 draws, rank 1 lacks 3 groups: one round draws ceil(3 / 2) = 2
    micro-batches on both (real Dist over gloo), rank 0's 3 extra kept groups are surplus. With no
    round the step is short: 5 groups over both ranks, a micro-batch of n weighs 2 x n / 5, rank
    1's missing one is a filler."""
    import multiprocessing
    import socket

    import vqa_grpo.distributed  # noqa: F401  imported here, once, for both children
    import vqa_grpo.grpo.dynamic  # noqa: F401

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Forked from this process, which has imported torch and vqa_grpo already: two real processes
    # without the seconds each would spend importing them again (as DataLoader's workers are made).
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=agree_rank, args=(r, port, tmp_path)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.exitcode is None:
            p.kill()
            p.join()
        assert p.exitcode == 0, (tmp_path / f"err.{procs.index(p)}").read_text()[-2000:]
    r0, r1 = (json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1))
    full0, full1 = r0["3"], r1["3"]
    assert full0["stats"]["dynamic/rounds"] == full1["stats"]["dynamic/rounds"] == 1
    assert full0["rollouts"] == ["whole", "whole"] and full0["weights"] is None
    assert full1["rollouts"] == [[[1, 0], [2, 1]], "whole"] and full1["weights"] is None  # draw 3 whole
    assert full0["stats"] == full1["stats"]  # frac_reward_zero_std (1/8, 4/8) is training/tally.py's
    assert full1["stats"] == {
        "dynamic/rounds": 1,
        "dynamic/micro_batches_drawn": 4,
        "dynamic/groups_sampled": 16,
        "dynamic/groups_kept": 8,
        "dynamic/groups_surplus": 3,
        "dynamic/completions_per_kept_group": 2 * 16 / 8,
        "dynamic/short": 0.0,
    }
    assert all(isinstance(v, float) for v in full1["stats"].values())  # as one process logs them
    short0, short1 = r0["0"], r1["0"]
    assert short0["weights"] == [2 * 2 / 5, 2 * 2 / 5] and short0["rollouts"] == ["whole", "whole"]
    assert short1["weights"] == [2 * 1 / 5, 0.0] and short1["rollouts"] == [[[1, 0]], [[0, 0]]]
    assert short1["stats"]["dynamic/groups_kept"] == 5 and short1["stats"]["dynamic/short"] == 1.0
    assert short0["stats"]["dynamic/groups_surplus"] == short1["stats"]["dynamic/groups_surplus"] == 0
