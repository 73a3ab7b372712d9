"""The uninterrupted 24-step SFT run that the fault tests (test_faults.py, test_long_runs.py) resume against."""

from __future__ import annotations

import pytest
from launches import shared
from test_faults import overrides, run_inline


@pytest.fixture(scope="session")
def uninterrupted(synth_dir, tiny_model_dir, tmp_path_factory):
    """``overrides()``'s run, never stopped: 24 steps, checkpoints 20 and 24 kept, final/; made once
    per test session, whichever xdist worker asks first (launches.shared)."""
    return shared("uninterrupted", tmp_path_factory, lambda out: run_inline(overrides(synth_dir, tiny_model_dir, out)))
