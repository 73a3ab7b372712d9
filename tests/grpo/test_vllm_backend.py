"""The vLLM generation backend, as far as it can be checked without vLLM (CUDA-only wheels; this
machine has neither a GPU nor vllm installed): the one-line error that names the extra, and the
backend's pure parts. ``collate`` is fed stand-ins of vLLM's ``CompletionOutput`` (token_ids,
logprobs as one {token: Logprob} dict per step, finish_reason), named as such; the engine itself
has not run here (README, "Scaling").
"""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from vqa_grpo.cli import main
from vqa_grpo.grpo.vllm_backend import collate, truncated_is_weights

NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")


def standin_output(tokens: list[int], logprobs: list[float], finish: str):
    """A stand-in of vllm.CompletionOutput with the fields collate reads."""
    steps = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, logprobs)]
    return SimpleNamespace(token_ids=tokens, logprobs=steps, finish_reason=finish)


@NO_VLLM
def test_train_with_vllm_missing_is_one_line_naming_the_extra(synth_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", f"model.name_or_path={tiny_model_dir}", f"data.path={synth_dir}", f"train.output_dir={out}",
                 "grpo.generation_backend=vllm", "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == ("error: grpo.generation_backend=vllm needs vLLM, which runs on CUDA GPUs: pip install "
                   "'vqa-grpo[vllm]', or set grpo.generation_backend=transformers")
    assert not out.exists()  # nothing half-written


def test_collate_right_pads_and_marks_truncation():
    s = collate([
        standin_output([5, 7, 2], [-0.5, -1.0, -0.25], "stop"),
        standin_output([9], [-2.0], "stop"),
        standin_output([4, 4, 4], [-0.1, -0.2, -0.3], "length"),
    ], max_tokens=3)
    assert s.ids.tolist() == [[5, 7, 2], [9, 0, 0], [4, 4, 4]]
    assert s.mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1]]
    assert s.truncated.tolist() == [False, False, True]
    expected = [[-0.5, -1.0, -0.25], [-2.0, 0.0, 0.0], [-0.1, -0.2, -0.3]]
    assert [row == pytest.approx(e, abs=1e-7) for row, e in zip(s.logprobs.tolist(), expected)] == [True] * 3


def test_truncated_importance_weights_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]])
    sampler = torch.tensor([[-1.0, -1.0, -2.0], [-0.2, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = truncated_is_weights(old, sampler, mask, cap=2.0)
    expected = [[1.0, math.exp(-1.0), 2.0],  # equal; pi_old lower; exp(1.5) = 4.48 capped at 2
                [math.exp(0.1), math.exp(-2.5), 0.0]]  # the padding position weighs nothing
    torch.testing.assert_close(w, torch.tensor(expected), rtol=1e-6, atol=0)
    assert not w.requires_grad
