"""The uninterrupted 24-step SFT run that the fault tests (test_faults.py, test_long_runs.py) resume against."""

from __future__ import annotations

import pytest
from test_faults import overrides, run_inline


@pytest.fixture(scope="session")
def uninterrupted(synth_dir, tiny_model_dir, tmp_path_factory):
    """``overrides()``'s run, never stopped: 24 steps, checkpoints 20 and 24 kept, final/."""
    out = tmp_path_factory.mktemp("full") / "run"
    run_inline(overrides(synth_dir, tiny_model_dir, out))
    return out
