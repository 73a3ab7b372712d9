"""Shared fixtures: the synthetic data set and the tiny Qwen2-VL, built offline once per session."""

from __future__ import annotations

import pytest
import torch

# Tiny models spend their time in per-op overhead; a second OpenMP thread only adds to it.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """200 synthetic questions (JSONL + PNG) at 112 px, seed 0."""
    from vqa_grpo.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), n=200, seed=0).parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Qwen2-VL of `vqa-grpo model tiny`, seed 0 (read-only: copy it before training)."""
    from vqa_grpo.models.tiny import build_tiny

    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("tiny") / "model", seed=0)


# The files of multi-process launches, longest first: pytest-xdist (--dist loadfile) hands files
# to its workers in collection order, so these start first and the short files fill the gaps,
# rather than one of them starting last and running alone at the end.
LONGEST_FIRST = (
    "training/test_deepspeed.py",
    "training/test_fsdp.py",
    "training/test_distributed.py",
    "training/test_long_runs.py",
    "training/test_faults.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: every file keeps its own order
