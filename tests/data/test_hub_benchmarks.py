"""Benchmarks (data/benchmarks.py) and the presets lmms-eval reads: VizWiz, lmms-lab's ChartQA,
A-OKVQA's multiple-choice form, the lmms-lab-encoder ids, and what a benchmark sets when the user
sets nothing (reward, best/'s metric, prompt, answer length).

Offline, on tmp repositories laid out as Hub dataset repositories with the column names and types
lmms-eval's task code reads (test_hub.py builds them and holds the offline fixture).
"""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, Features, List, Value
from datasets import Image as ImageFeature
from test_hub import aokvqa_repo, by_id, docvqa_repo, fields, hf, image_cell, load, offline_tmp_cache, write_repo  # noqa: F401

from vqa_grpo.cli import main
from vqa_grpo.config import ConfigError
from vqa_grpo.config_load import load_config
from vqa_grpo.data.benchmarks import BENCHMARKS, LMMS_EVAL_COMMIT, resolve
from vqa_grpo.data.hub import PRESETS, find_preset
from vqa_grpo.data.prompts import prompt_template, user_text

VIZWIZ_FEATURES = Features({
    "question_id": Value("string"), "image": ImageFeature(), "question": Value("string"),
    "answers": List(Value("string")), "category": Value("string"),
})  # fmt: skip


def vizwiz_repo(root):
    rows = {
        "question_id": ["VizWiz_val_00000000.jpg", "VizWiz_val_00000001.jpg"],
        "image": [image_cell((30, 40), "white"), image_cell((30, 40), "black")],
        "question": ["what is this?", "Can you tell me what this medicine is please?"],
        "answers": [["unanswerable"] * 6 + ["table", "table", "floor", "unsuitable"],
                    ["night time"] * 8 + ["nyquil"] * 2],
        "category": ["unanswerable", "other"],
    }  # fmt: skip
    return write_repo(root, {"default": {"val": Dataset.from_dict(rows, features=VIZWIZ_FEATURES)}})


def test_vizwiz_preset_reads_val_for_validation_with_the_category_as_question_type(tmp_path):
    root = vizwiz_repo(tmp_path / "VizWiz-VQA")
    examples, _ = load(root, "data.split=validation", "data.preset=lmms-lab/VizWiz-VQA")
    ex = by_id(examples)
    assert list(ex) == ["VizWiz_val_00000000.jpg", "VizWiz_val_00000001.jpg"]
    assert fields(ex["VizWiz_val_00000000.jpg"]) == (
        "what is this?",
        ["unanswerable"] * 6 + ["table", "table", "floor", "unsuitable"],
        "unanswerable",
        "other",
        "unanswerable",
    )
    assert fields(ex["VizWiz_val_00000001.jpg"])[2:] == ("night time", "other", "other")
    assert ex["VizWiz_val_00000001.jpg"].load_image().size == (30, 40)


def test_lmms_lab_chartqa_preset_reads_the_answer_and_the_type(tmp_path):
    features = Features({"type": Value("string"), "question": Value("string"), "answer": Value("string"),
                         "image": ImageFeature()})  # fmt: skip
    rows = {"type": ["human_test", "augmented_test"], "question": ["How many food items are shown?", "What is the "
            "value of Italy?"], "answer": ["14", "12.5%"], "image": [image_cell((20, 10), "white")] * 2}  # fmt: skip
    root = write_repo(tmp_path / "ChartQA", {"default": {"test": Dataset.from_dict(rows, features=features)}})
    examples, _ = load(root, "data.split=test", "data.preset=lmms-lab-encoder/ChartQA")
    assert [(e.id, *fields(e)) for e in examples] == [
        ("row1", "How many food items are shown?", ["14"], "14", "number", "human_test"),
        ("row2", "What is the value of Italy?", ["12.5%"], "12.5%", "other", "augmented_test"),
    ]


def test_lmms_eval_ids_find_the_same_presets():
    for encoder, lab in [
        ("lmms-lab-encoder/VQAv2", "lmms-lab/VQAv2"),
        ("lmms-lab-encoder/textvqa", "lmms-lab/textvqa"),
        ("lmms-lab-encoder/DocVQA", "lmms-lab/DocVQA"),
        ("lmms-lab-encoder/ChartQA", "lmms-lab/ChartQA"),
        ("lmms-lab-encoder/OK-VQA", "lmms-lab/OK-VQA"),
        ("lmms-lab-encoder/GQA", "lmms-lab/GQA"),
        ("lmms-lab-encoder/VizWiz-VQA", "lmms-lab/VizWiz-VQA"),
    ]:
        assert find_preset(None, encoder) is PRESETS[lab] and find_preset(encoder.upper(), "x") is PRESETS[lab]


def test_aokvqa_multiple_choice_form_puts_the_choices_in_the_prompt(tmp_path):
    root = aokvqa_repo(tmp_path / "A-OKVQA")
    (ex,), _ = load(root, "data.split=validation", "data.preset=HuggingFaceM4/A-OKVQA", "data.benchmark=aokvqa_mc")
    assert ex.question == "What is in the motorcyclist's mouth?\nA. toothpick\nB. food\nC. popsicle stick\nD. cigarette"
    assert (ex.answers, ex.answer) == (["D", "cigarette"], "D")
    cfg = load_config(None, [f"data.path={hf(root)}", "data.benchmark=aokvqa_mc"])
    resolved = resolve(cfg)
    assert (resolved.reward.components, resolved.train.eval_metric) == (["multiple_choice"], "multiple_choice")
    assert user_text(ex.question, prompt_template(resolved.data)) == (  # lmms-eval's multiple-choice layout (ai2d)
        "What is in the motorcyclist's mouth?\nA. toothpick\nB. food\nC. popsicle stick\nD. cigarette\n"
        "Answer with the option's letter from the given choices directly."
    )
    (direct,), _ = load(root, "data.split=validation", "data.preset=HuggingFaceM4/A-OKVQA")
    assert direct.question == "What is in the motorcyclist's mouth?" and direct.answers == ["cigarette"] * 10


def test_a_preset_sets_what_the_user_left_unset(tmp_path):
    root = docvqa_repo(tmp_path / "DocVQA")
    base = [f"data.path=hf:{root}", "data.preset=lmms-lab-encoder/DocVQA"]
    docvqa = resolve(load_config(None, base))
    assert (docvqa.data.benchmark, docvqa.reward.components, docvqa.train.eval_metric, docvqa.eval.max_new_tokens) == (
        "docvqa",
        ["anls"],
        "anls",
        32,
    )
    assert prompt_template(docvqa.data) == "{question}\nAnswer the question using a single word or phrase."
    assert docvqa.eval.vqa_convention == "lmms_eval"  # a benchmark's VQA accuracy as lmms-eval computes it
    info = resolve(load_config(None, [*base, "data.config_name=InfographicVQA"]))
    assert (info.data.benchmark, info.train.eval_metric) == ("infovqa", "anls")
    mine = resolve(load_config(None, [*base, "reward.components=[composite]", "train.eval_metric=vqa_accuracy",
                                      "eval.max_new_tokens=8", "data.prompt_template={question}?",
                                      "eval.vqa_convention=official"]))  # fmt: skip
    assert (mine.reward.components, mine.train.eval_metric, mine.eval.max_new_tokens) == (
        ["composite"],
        "vqa_accuracy",
        8,
    )
    assert prompt_template(mine.data) == "{question}?" and mine.eval.vqa_convention == "official"
    assert resolve(mine) == mine  # the user's settings win; resolving twice changes nothing
    # a local file names its benchmark; data.benchmark wins over a preset's
    chart = resolve(load_config(None, ["data.path=data.jsonl", "data.benchmark=ChartQA"]))
    assert (chart.data.benchmark, chart.reward.components, chart.eval.max_new_tokens) == (
        "chartqa",
        ["relaxed_accuracy"],
        16,
    )
    assert prompt_template(chart.data) == "{question}\nAnswer the question with a single word."
    assert resolve(load_config(None, [*base, "data.benchmark=gqa"])).train.eval_metric == "exact_match"
    # the path evaluated, when it is not data.path (vqa-grpo evaluate --data hf:...)
    assert resolve(load_config(None, []), f"hf:{root}").data.benchmark is None  # a folder: no preset by name
    assert resolve(load_config(None, []), "hf:lmms-lab/VizWiz-VQA").data.benchmark == "vizwiz"


def test_every_benchmark_has_a_preset_and_lmms_eval_prompts():
    named = {p.benchmark for p in PRESETS.values()} | {
        b for p in PRESETS.values() for b in p.config_benchmarks.values()
    }
    assert named | {"aokvqa_mc"} == set(BENCHMARKS)
    assert {n: b.max_new_tokens for n, b in BENCHMARKS.items() if b.max_new_tokens != 16} == {
        "docvqa": 32,
        "infovqa": 32,
    }
    unanswerable = "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
    assert [n for n, b in BENCHMARKS.items() if unanswerable in b.prompt] == ["okvqa", "vizwiz"]
    assert [n for n, b in BENCHMARKS.items() if b.prompt.startswith("{question.capitalized}")] == ["textvqa", "vizwiz"]
    assert len(LMMS_EVAL_COMMIT) == 40
    # Each prompt and length as lmms-eval's task files at LMMS_EVAL_COMMIT write them: the default
    # post_prompt of lmms_eval/tasks/<task>/ (docvqa/_default_template_docvqa_yaml, chartqa/chartqa.yaml,
    # gqa/gqa.yaml, vqav2/_default_template_vqav2_yaml, textvqa/_default_template_textvqa_yaml,
    # ok_vqa/_default_template_vqa_yaml, vizwiz_vqa/_default_template_vqa_yaml) after doc_to_text's question
    # (question.capitalize() in textvqa/utils.py and vizwiz_vqa/utils.py), and generation_kwargs.max_new_tokens
    short, unsure = "\nAnswer the question using a single word or phrase.", unanswerable.rstrip("\n")
    mc = "\nAnswer with the option's letter from the given choices directly."  # muirbench.yaml, videomme.yaml
    videomme = (  # videomme/utils.py videomme_doc_to_text's option_prompt
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option."
    )
    assert {n: (b.prompt, b.max_new_tokens) for n, b in BENCHMARKS.items()} == {
        "docvqa": ("{question}" + short, 32),
        "infovqa": ("{question}" + short, 32),
        "chartqa": ("{question}\nAnswer the question with a single word.", 16),
        "gqa": ("{question}" + short, 16),
        "vqav2": ("{question}" + short, 16),
        "textvqa": ("{question.capitalized}" + short, 16),  # the task sets no max_new_tokens
        "okvqa": ("{question}" + unsure + short, 16),  # none set
        "aokvqa": ("{question}" + short, 16),  # no lmms-eval task
        "aokvqa_mc": ("{question}" + mc, 16),
        "vizwiz": ("{question.capitalized}" + unsure + short, 16),  # none set
        "muirbench": ("{question}" + mc, 16),  # the question carries its options (test_hub_multi.py)
        "videomme": (videomme + "\n{question}\n" + mc, 16),
    }
    assert user_text("what does the SIGN say?", BENCHMARKS["vizwiz"].prompt) == (
        "What does the sign say?" + unsure + short  # vizwiz_vqa_doc_to_text: question.capitalize()
    )


def test_unknown_benchmark_or_metric_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^data.benchmark='docvqaa' is not a known benchmark; choose one of docvqa,"):
        load_config(None, ["data.benchmark=docvqaa"])
    assert main(["data", "inspect", str(tmp_path), "data.benchmark=vizwizz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.benchmark='vizwizz' is not a known benchmark") and err.count("\n") == 1
    assert main(["data", "inspect", str(tmp_path), "train.eval_metric=anlss"]) == 2
    assert capsys.readouterr().err.startswith("error: train.eval_metric='anlss': choose one of vqa_accuracy")
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--unanswerable", "1.5"]) == 2
    assert (
        capsys.readouterr().err == "error: unanswerable must be a share in [0, 1] (--unanswerable), e.g. 0.1; got 1.5\n"
    )
    assert not (tmp_path / "s").exists()


def test_inspect_shows_the_benchmark_metric_and_prompt(tmp_path, capsys):
    root = vizwiz_repo(tmp_path / "VizWiz-VQA")
    args = ["data", "inspect", hf(root), "data.split=validation", "data.preset=lmms-lab/VizWiz-VQA"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "benchmark: vizwiz  reward vqa_accuracy  best/ by vqa_accuracy  max new tokens 16\n" in out
    assert (
        'prompt: "{question.capitalized}\\nWhen the provided information is insufficient, respond with '
        "'Unanswerable'.\\nAnswer the question using a single word or phrase.\"\n"
    ) in out
    vizwiz = prompt_template(resolve(load_config(None, ["data.benchmark=vizwiz"])).data)
    assert user_text(" what does the SIGN say? ", vizwiz) == (  # lmms-eval's question.capitalize()
        "What does the sign say?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
        "Answer the question using a single word or phrase."
    )
    assert main([*args, "--json", "reward.components=[abstention,vqa_accuracy]", "reward.weights=[0.5,0.5]"]) == 0
    uses = json.loads(capsys.readouterr().out)["benchmark"]
    assert (uses["benchmark"], uses["reward"], uses["eval_metric"]) == (
        "vizwiz",
        ["abstention", "vqa_accuracy"],
        "vqa_accuracy",
    )


@pytest.mark.slow
def test_evaluate_on_a_preset_reports_its_metric_as_the_headline(tmp_path, tiny_model_dir, capsys):
    root = docvqa_repo(tmp_path / "DocVQA")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", hf(root), "--out", str(out), "data.split=validation",
            "data.preset=lmms-lab/DocVQA", "train.device=cpu", "train.progress=false"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["primary_metric"] == "anls" and metrics["n"] == 2 and 0.0 <= metrics["anls"] <= 1.0
    assert metrics["vqa_convention"] == "lmms_eval"
    assert "answerability" not in metrics  # no question of DocVQA is unanswerable
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["49153", "24581"] and all("anls" in r for r in rows)


def test_a_multiple_choice_benchmark_on_data_without_choices_is_refused(synth_dir, tmp_path, capsys):
    assert main(["data", "inspect", str(synth_dir), "data.benchmark=aokvqa_mc"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: multiple_choice needs each example's answers as [choice")
    args = ["train", f"data.path={synth_dir}", f"train.output_dir={tmp_path / 'run'}", "data.benchmark=aokvqa_mc"]
    assert main([*args, "model.name_or_path=/nonexistent"]) == 2  # refused with the data, before the model
    assert capsys.readouterr().err.startswith("error: multiple_choice needs") and not (tmp_path / "run").exists()
