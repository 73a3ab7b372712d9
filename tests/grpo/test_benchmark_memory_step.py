"""benchmarks/memory_step.py's meter: torch's CPU allocations as torch.profiler records them, the
running peak of what the step itself allocated, checked on allocations of known sizes."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from memory_step import MIB, Meter, check_meter  # noqa: E402


def test_the_meter_sees_the_peak_of_known_allocations():
    assert check_meter() == 96.0  # 64 MiB, then 32 more, 64 freed, 16 more: the peak is 96 MiB

    before = torch.empty(100 * MIB, dtype=torch.uint8)  # allocated before: neither it nor its free counts
    with Meter() as m:
        del before
        kept = torch.empty(8 * MIB, dtype=torch.uint8)
        a, b = torch.empty(4 * MIB, dtype=torch.uint8), torch.empty(4 * MIB, dtype=torch.uint8)  # 16 MiB at once
        del a, b
    assert m.peak == 16 * MIB and m.secs > 0
    assert kept.numel() == 8 * MIB
