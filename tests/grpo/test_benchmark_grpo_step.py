"""benchmarks/grpo_step.py runs end to end and prints the JSON object the docs are made from.

Not a timing test: one step on the smallest setting, checking the output's shape and the counts
that do not depend on the machine. Two of the four methods, to keep it short (each worker process
imports torch and transformers); TRL is left out anyway, CI does not install the bench extra. The
parent side (the script's ``main``: data, workers, report) runs in this process, which has torch
and transformers imported already, and ``--fork-workers`` forks each method's worker process from
it rather than starting an interpreter that imports them again. Each question shows two images
(``--images-per-question 2``), so the run also checks that every method's prompts hold both.
"""

import json
import signal
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_grpo_step_benchmark_prints_one_json_object_with_every_method(tiny_model_dir, monkeypatch, capsys):
    args = [
        "--model",
        str(tiny_model_dir),
        "--group-size",
        "2",
        "--questions",
        "1",
        "--image-size",
        "112",
        "--max-new-tokens",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--methods",
        "vqa_grpo,limit",
        "--json",
        "--fork-workers",
        "--images-per-question",
        "2",
    ]
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # grpo_step imports step_setup, its workers step_methods
    import grpo_step

    def expire(signum, frame):
        raise TimeoutError("benchmarks/grpo_step.py: no result after 600 s")

    previous = signal.signal(signal.SIGALRM, expire)  # the subprocess's timeout it ran under before
    signal.alarm(600)
    try:
        grpo_step.main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for m in ("vqa_grpo", "limit"):
        r = out["methods"][m]
        assert "error" not in r, (m, r)
        assert out[f"{m}_step_s"] == r["step_s"] > 0 and r["cpu_s"] > 0 and len(r["step_s_all"]) == 1
        assert r["tokens_per_s"] > 0 and "peak_mib" in r
    assert (
        out["trl_step_s"] is None and out["seed_loop_step_s"] is None and set(out["methods"]) == {"vqa_grpo", "limit"}
    )
    assert out["methods"]["vqa_grpo"]["path"] == "shared prefix, fused prefill"
    # Two 112 px images of 16 image tokens each (after the 2x2 merge) in every prompt: 32 per question.
    assert (
        out["methods"]["vqa_grpo"]["image_tokens_per_question"]
        == out["methods"]["limit"]["image_tokens_per_question"]
        == 32
    )
    assert out["ratios"]["vqa_grpo_over_limit"] == out["vqa_grpo_step_s"] / out["limit_step_s"]
    s = out["settings"]
    got = (s["group_size"], s["questions"], s["image_size"], s["image_tokens"], s["max_new_tokens"])
    assert got + (s["images_per_question"],) == (2, 1, 112, 16, 2, 2)
    assert out["model_type"] == "qwen2_vl" and s["model_parameters"] > 500_000 and s["model"] == str(tiny_model_dir)
    # The limit counts B * G * max_new_tokens completion tokens: 1 x 2 x 2 = 4 per step.
    limit = out["methods"]["limit"]
    assert abs(limit["tokens_per_s"] * limit["step_s"] - 4.0) < 1e-6
