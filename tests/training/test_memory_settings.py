"""The memory settings' bad input through the real CLI, in this process: grpo.logprob_chunk_size
that is not a positive integer, and train.offload_activations on a machine without CUDA. Each is
one line "error: ..." naming the key and the fix, exit 2, and no run directory written."""

from __future__ import annotations

import pytest
import torch

from vqa_grpo.cli import main
from vqa_grpo.data.synthetic import synthesize


def refused(capsys, args: list[str], out_dir) -> str:
    rc = main([*args, f"train.output_dir={out_dir}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert not out_dir.exists(), "a refused command wrote its run directory"
    return err


@pytest.mark.parametrize(
    "value, says",
    [
        ("0", "grpo.logprob_chunk_size=0: must be >= 1 (e.g. 256)"),
        ("-8", "grpo.logprob_chunk_size=-8: must be >= 1 (e.g. 256)"),
        ("2.5", "grpo.logprob_chunk_size must be an integer, got 2.5"),
        ("many", "grpo.logprob_chunk_size must be an integer, got 'many'"),
    ],
)
def test_a_chunk_size_that_is_not_a_positive_integer_is_refused(value, says, capsys, tmp_path):
    err = refused(capsys, ["train", f"grpo.logprob_chunk_size={value}"], tmp_path / "run")
    assert err.strip() == f"error: {says}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_offloading_activations_without_cuda_is_refused_before_anything_is_written(tiny_model_dir, capsys, tmp_path):
    data = synthesize(tmp_path / "data", n=8, seed=0).parent  # its own data: nothing written beside it yet
    before = sorted(p.name for p in data.iterdir())
    args = ["train", f"data.path={data}", f"model.name_or_path={tiny_model_dir}", "train.offload_activations=true"]
    err = refused(capsys, args, tmp_path / "run")
    assert err.strip() == (
        "error: train.offload_activations=true moves activations from a GPU to host memory, and this run is "
        "on cpu; set train.offload_activations=false (or run on a CUDA device)"
    )
    assert not (data / ".vqa_grpo_cache").exists(), "the refusal came after the data's index was written"
    assert sorted(p.name for p in data.iterdir()) == before
