"""TRL's reward convention as a TRL user meets it: every dataset column reaches a reward function
by name, any callable is a reward, the weights default to 1.0 each, TRL's conversational prompt
and images columns are read; and the prompt template, reasoning mode and completions.jsonl."""

from __future__ import annotations

import functools
import json
import textwrap

import datasets
import pytest
from PIL import Image

import vqa_grpo
from vqa_grpo.cli import main
from vqa_grpo.config import ConfigError, DataConfig, RewardConfig
from vqa_grpo.data.loader import load_examples
from vqa_grpo.data.prompts import REASONING_TEMPLATE, prompt_template, user_text
from vqa_grpo.models.loading import load_model
from vqa_grpo.rewards import compute_rewards

TRL_MODULE = """
SEEN = []

def accuracy(completions, solution, **kwargs):
    SEEN.append({"solution": solution, "aliases": kwargs["aliases"], "id": kwargs["id"]})
    return [0.25] * len(completions)

def alias_hit(completions, aliases, **kwargs):
    return [0.5 if isinstance(a, list) and a else 0.0 for a in aliases]
"""


def _rows_with_columns(synth_dir, tmp_path, n=12):
    """The synthetic rows with TRL-style extra columns: ``solution`` (the answer) and ``aliases``."""
    rows = [json.loads(line) for line in (synth_dir / "data.jsonl").read_text().splitlines()[:n]]
    path = tmp_path / "trl.jsonl"
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({**r, "solution": r["answer"], "aliases": [r["answer"], r["answer"].upper()]}) + "\n")
    return rows, path


def _run_args(tiny_model_dir, synth_dir, data, run_dir, *extra):
    return [
        f"model.name_or_path={tiny_model_dir}",
        f"data.path={data}",
        f"data.image_root={synth_dir}",
        f"train.output_dir={run_dir}",
        "train.max_steps=1",
        "train.per_device_batch_size=2",
        "train.gradient_accumulation_steps=2",
        "grpo.num_generations=2",
        "grpo.max_completion_length=4",
        "train.progress=false",
        "train.cpu_threads=1",
        "data.eval_fraction=0",
        "train.report_to=none",
        *extra,
    ]


def test_a_trl_reward_gets_every_column_and_the_total_is_the_sum(tiny_model_dir, synth_dir, tmp_path, monkeypatch):
    (tmp_path / "trl_rewards.py").write_text(textwrap.dedent(TRL_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    rows, data = _rows_with_columns(synth_dir, tmp_path)
    run_dir = tmp_path / "run"
    args = _run_args(
        tiny_model_dir, synth_dir, data, run_dir, "reward.components=[trl_rewards:accuracy,trl_rewards:alias_hit]"
    )
    assert main(["train", *args]) == 0  # no reward.weights: 1.0 each

    import trl_rewards

    by_id = {r["id"]: r for r in rows}
    seen = trl_rewards.SEEN[0]  # the first batch: 2 questions x 2 completions
    assert len(seen["id"]) == 4 and seen["solution"] == [by_id[i]["answer"] for i in seen["id"]]
    assert seen["aliases"] == [[by_id[i]["answer"], by_id[i]["answer"].upper()] for i in seen["id"]]
    step = next(json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if '"reward"' in s)
    assert (step["reward/accuracy"], step["reward/alias_hit"]) == (0.25, 0.5)
    assert step["reward"] == pytest.approx(0.75)  # 1.0 x 0.25 + 1.0 x 0.5
    groups = [json.loads(s) for s in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert len(groups) == 4  # every group of the step: 2 micro-batches x 2 questions
    for g in groups:
        assert len(g["raw"]) == len(g["completions"]) == 2 and g["rewards"] == [0.75, 0.75]
        assert g["completions"] == [r.strip().splitlines()[0].strip() if r.strip() else "" for r in g["raw"]]


class Constant:
    def __init__(self, value):
        self.value = value

    def __call__(self, completions, **kwargs):
        return [self.value] * len(completions)


def scaled(completions, scale, **kwargs):
    return [scale] * len(completions)


def test_lambdas_partials_and_callable_objects_are_rewards(tiny_model_dir, synth_dir, tmp_path):
    _, data = _rows_with_columns(synth_dir, tmp_path)
    run_dir = tmp_path / "run"
    cfg = vqa_grpo.load_config(
        None,
        _run_args(
            tiny_model_dir,
            synth_dir,
            data,
            run_dir,
            "reward.components=[format]",
            "reward.reasoning=true",
            "train.log_completion_groups=1",
        ),
    )
    funcs = [lambda completions, **kw: [0.125] * len(completions), Constant(0.25), functools.partial(scaled, scale=0.5)]
    assert vqa_grpo.train(cfg, reward_funcs=funcs).steps == 1
    step = next(json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if '"reward"' in s)
    assert (step["reward/lambda"], step["reward/Constant"], step["reward/scaled"]) == (0.125, 0.25, 0.5)
    assert step["reward"] == pytest.approx(step["reward/format"] + 0.875)
    (group,) = [json.loads(s) for s in (run_dir / "completions.jsonl").read_text().splitlines()]  # capped at 1
    # Reasoning mode: no <answer> tags from the tiny model, so the cleaned answers are empty; the
    # raw text is what it wrote.
    assert group["completions"] == ["", ""] and all(isinstance(r, str) for r in group["raw"])


def test_trl_conversational_prompt_and_images_columns(tmp_path):
    red = Image.new("RGB", (32, 32), (200, 0, 0))
    red.save(tmp_path / "red.png")
    user_turn = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What color is it? "}]}
    rows = [
        {"images": ["red.png"], "prompt": [{"role": "system", "content": "Be brief."}, user_turn], "answer": "red"},
        {"images": ["red.png", "red.png"], "prompt": [{"role": "user", "content": "Two?"}], "answer": "red"},
        {"image": "red.png", "prompt": [{"role": "user", "content": "Plain text turn?"}], "answer": "red"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, report = load_examples(str(tmp_path / "d.jsonl"), DataConfig(max_skip_fraction=0.5))
    assert [e.question for e in examples] == ["What color is it?", "Two?", "Plain text turn?"]
    assert examples[0].load_image().getpixel((0, 0)) == (200, 0, 0)
    assert [e.num_images for e in examples] == [1, 2, 1] and (report.kept, report.max_images) == (3, 2)
    # A datasets folder as TRL's VLM examples have it: images a List(Image), the answer in solution.
    ds = datasets.Dataset.from_dict(
        {"images": [[red]], "prompt": [[{"role": "user", "content": "What color?"}]], "solution": ["red"]}
    )
    ds.cast_column("images", datasets.List(datasets.Image())).save_to_disk(str(tmp_path / "ds"))
    cfg = vqa_grpo.load_config(None, ["data.columns.answer=solution"]).data
    (ex,), _ = load_examples(str(tmp_path / "ds"), cfg)
    assert (ex.question, ex.answer, ex.fields["solution"]) == ("What color?", "red", "red")
    assert ex.load_image().getpixel((0, 0)) == (200, 0, 0)


def test_a_prompt_template_changes_the_encoded_prompt(tiny_model_dir, capsys):
    cfg = vqa_grpo.load_config(None, ["data.prompt_template={question} answer with a word ."])
    lm = load_model(cfg.model.__class__(name_or_path=str(tiny_model_dir)), "cpu", trainable=False)
    text = user_text(" Is there a red circle? ", prompt_template(cfg.data))
    batch = lm.adapter.encode_prompts(lm.processor, [Image.new("RGB", (112, 112))], [text])
    decoded = lm.processor.tokenizer.decode(batch.input_ids[0], skip_special_tokens=True)
    assert decoded.endswith("is there a red circle ? answer with a word . assistant")
    default = user_text(" Is there a red circle? ", prompt_template(vqa_grpo.load_config(None, []).data))
    assert default == "Is there a red circle? Answer with a single word or short phrase."  # the seed's, unchanged
    capsys.readouterr()
    assert main(["train", "data.prompt_template=Answer: {answer}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.prompt_template='Answer: {answer}' has fields {answer} besides {question}")


def test_an_unquoted_prompt_template_in_yaml_is_told_to_be_quoted(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("data:\n  prompt_template: {question}\n")
    with pytest.raises(ConfigError) as err:
        vqa_grpo.load_config(file)
    assert str(err.value) == (
        "data.prompt_template must be a string, got {'question': None}; YAML reads an unquoted {...} as a "
        "mapping: quote the value"
    )
    file.write_text("data:\n  prompt_template: '{question} Answer briefly.'\n")
    assert vqa_grpo.load_config(file).data.prompt_template == "{question} Answer briefly."


def test_reasoning_mode_asks_for_the_tags_and_scores_a_tagged_completion():
    cfg = vqa_grpo.load_config(None, ["reward.reasoning=true", "reward.components=[vqa_accuracy,format]"])
    assert prompt_template(cfg.data, cfg.reward.reasoning) == REASONING_TEMPLATE
    asked = user_text("What color?", REASONING_TEMPLATE)
    assert "<think>" in asked and "</think>" in asked and "<answer>" in asked and "</answer>" in asked
    completions = ["<think>the shape is red</think><answer>red</answer>", "red"]
    scored = compute_rewards(completions, [["red"], ["red"]], ["other", "other"], cfg.reward)
    assert scored.total.tolist() == [2.0, 0.0]  # 1.0 x vqa_accuracy + 1.0 x format; untagged scores 0
    assert RewardConfig().weights is None


@pytest.mark.parametrize(
    "command, extra, says",
    [
        ("sft", [], "sft trains on the bare answers"),
        ("train", ["grpo.sft_coef=0.1"], "grpo.sft_coef=0.1 trains on the bare answers"),
    ],
)
def test_supervised_targets_under_reasoning_mode_are_refused(
    tiny_model_dir, synth_dir, tmp_path, capsys, command, extra, says
):
    out = tmp_path / "run"
    args = [f"model.name_or_path={tiny_model_dir}", f"data.path={synth_dir}", f"train.output_dir={out}"]
    assert main([command, *args, "reward.reasoning=true", *extra]) == 2
    fix = "set reward.reasoning=false for sft" if command == "sft" else "set grpo.sft_coef=0"
    assert capsys.readouterr().err == (
        f"error: {says}, but reward.reasoning=true asks for <think>...</think><answer>...</answer> and scores "
        f"only the answer tags' content; {fix}\n"
    )
    assert not out.exists()
