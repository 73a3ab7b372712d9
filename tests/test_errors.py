"""errors.py holds the package's exceptions: each an Exception and none a RuntimeError, so that
the trainer's handlers for torch's RuntimeErrors (out of memory, a failed collective) never take
one of them for one; no other module defines an exception."""

from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import torch

from vqa_grpo import errors
from vqa_grpo.training.faults import is_oom

SRC = Path(__file__).resolve().parents[1] / "src" / "vqa_grpo"
OURS = {name: c for name, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__}


def test_each_error_is_an_exception_and_none_a_runtime_error():
    assert sorted(OURS) == ["BadExample", "ConfigError", "RewardFunctionError", "TrainingStopped", "UserError"]
    for c in OURS.values():
        assert issubclass(c, Exception) and not issubclass(c, RuntimeError), c


def test_only_torch_s_errors_are_out_of_memory():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB)"))
    assert not is_oom(RuntimeError("Expected all tensors to be on the same device"))
    ours = [
        errors.UserError("out of memory"),
        errors.RewardFunctionError("reward f: out of memory"),
        errors.TrainingStopped("a peer ran out of memory", exit_code=1),
        errors.BadExample("q1", "out of memory while decoding"),
    ]
    assert [is_oom(e) for e in ours] == [False] * 4


def _is_exception_base(base: ast.expr) -> bool:
    name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
    builtin = getattr(builtins, name, None)
    return (
        name in OURS
        or name.endswith(("Error", "Exception"))
        or (isinstance(builtin, type) and issubclass(builtin, BaseException))
    )


def test_no_other_module_defines_an_exception():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(_is_exception_base(b) for b in node.bases):
                found.append(f"{path.relative_to(SRC)}: {node.name}")
    assert found == []
