"""The user's own reward functions (rewards/user.py): TRL's calling convention, import paths in
reward.components, reward_funcs from Python, what a broken function gets, and the logs."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest

import vqa_grpo
from vqa_grpo.cli import main
from vqa_grpo.config import RewardConfig
from vqa_grpo.data.images import ImageLoader
from vqa_grpo.data.types import VQAExample
from vqa_grpo.data.video import VideoLoader
from vqa_grpo.errors import RewardFunctionError, UserError
from vqa_grpo.rewards import compute_rewards
from vqa_grpo.rewards.user import example_columns

EXAMPLES = [
    VQAExample(id=f"q{i}", question=f"Question {i}?", answers=["red", "red", "blue"], answer="red", answer_type="other")
    for i in range(3)
]
USER_MODULE = """
CALLS = []

def brevity(completions, **kwargs):
    CALLS.append(kwargs)
    return [1.0 if len(c.split()) <= 1 else 0.0 for c in completions]

def picky(completions, answers, **kwargs):
    return [None if c == "skip" else 0.5 for c in completions]

def broken(completions, **kwargs):
    raise KeyError("score")

def nan_at_second(completions, **kwargs):
    return [0.0, float("nan"), 0.0][: len(completions)]

def one_short(completions, **kwargs):
    return [0.0] * (len(completions) - 1)

SECOND = []

def fails_second_time(completions, **kwargs):
    SECOND.append(1)
    if len(SECOND) == 2:
        raise ValueError("bad batch")
    return [0.0] * len(completions)

def words(completions, **kwargs):
    return ["high"] * len(completions)

FLAG = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("my_rewards", None)
    return importlib.import_module("my_rewards")


def score(components, weights, completions=("red", "a red one", "skip"), functions=None):
    cfg = RewardConfig(components=list(components), weights=list(weights))
    return compute_rewards(
        list(completions),
        [e.answers for e in EXAMPLES],
        [e.answer_type for e in EXAMPLES],
        cfg,
        functions=functions,
        examples=EXAMPLES,
    )


def test_an_import_path_is_called_with_trls_keyword_arguments(user_module):
    r = score(["vqa_accuracy", "my_rewards:brevity"], [0.8, 0.2])
    assert r.parts["brevity"].tolist() == [1.0, 0.0, 1.0]
    acc = r.parts["vqa_accuracy"].tolist()  # lenient: 2 of 3 annotators said red
    assert r.total.tolist() == pytest.approx([0.8 * acc[0] + 0.2, 0.8 * acc[1], 0.8 * acc[2] + 0.2])
    kwargs = user_module.CALLS[0]
    assert kwargs["prompts"] == kwargs["question"] == ["Question 0?", "Question 1?", "Question 2?"]
    assert kwargs["answers"] == [["red", "red", "blue"]] * 3 and kwargs["answer_type"] == ["other"] * 3
    assert kwargs["id"] == ["q0", "q1", "q2"] and kwargs["image"] == ["q0", "q1", "q2"]  # no image file: the id
    assert kwargs["images"] == [[]] * 3 and kwargs["video"] == [None] * 3  # text-only questions
    assert set(kwargs) == {
        *("prompts", "answers", "answer", "question", "answer_type", "question_type", "image", "images", "video", "id")
    }
    assert set(r.seconds) == {"brevity"} and r.seconds["brevity"] >= 0


def test_several_images_and_a_video_are_named_by_path_or_by_id():
    loaders = (ImageLoader(Path("/d/a.png")), ImageLoader(b"\x89PNG"), ImageLoader(Path("/d/c.png")))
    clip = VQAExample(id="c", question="?", answers=["x"], answer="x", video_loader=VideoLoader(Path("/d/v.mp4")))
    pages = VQAExample(id="p", question="?", answers=["x"], answer="x", image_loaders=loaders)
    frames = VQAExample(id="f", question="?", answers=["x"], answer="x", video_loader=VideoLoader((Path("/d/0.png"),)))
    columns = example_columns([pages, clip, frames])
    assert columns["images"] == [["/d/a.png", "p#2", "/d/c.png"], [], []]
    assert columns["video"] == [None, "/d/v.mp4", "f#video"]
    assert columns["image"] == ["p", "c", "f"]  # no single image: the id


def test_none_leaves_a_completion_unscored_by_that_function(user_module):
    r = score(["vqa_accuracy", "my_rewards:picky"], [0.5, 0.5])
    assert math.isnan(r.parts["picky"][2]) and r.parts["picky"][:2].tolist() == [0.5, 0.5]
    assert r.total[2] == pytest.approx(0.5 * r.parts["vqa_accuracy"][2])  # nothing from picky


def test_python_callables_by_name():
    def shout(completions, **kwargs):
        return [float(c.isupper()) for c in completions]

    r = score(["shout"], [1.0], completions=("RED", "red", "Red"), functions={"shout": shout})
    assert r.total.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "name, says",
    [
        ("broken", "reward function broken raised KeyError: 'score' (batch starting at example q0)"),
        (
            "nan_at_second",
            "reward function nan_at_second returned nan for example q1; return a finite float (or None to leave a "
            "completion unscored)",
        ),
        ("one_short", "reward function one_short returned 2 values for 3 completions; return one per completion"),
        (
            "words",
            "reward function words returned 'high' for example q0; return a finite float (or None to leave a "
            "completion unscored)",
        ),
    ],
)
def test_a_broken_function_is_named_with_the_example_and_what_it_returned(user_module, name, says):
    with pytest.raises(RewardFunctionError) as err:
        score([f"my_rewards:{name}"], [1.0])
    assert str(err.value) == says


@pytest.mark.parametrize(
    "component, says",
    [
        ("no_such_module:f", "reward.components: cannot import module 'no_such_module' for 'no_such_module:f'"),
        (
            "my_rewards:brevty",
            "reward.components: module 'my_rewards' has no attribute 'brevty' (for 'my_rewards:brevty')",
        ),
        ("my_rewards:FLAG", "reward.components: 'my_rewards:FLAG' is a int, not a function"),
        ("brevity", "reward.components: unknown 'brevity'; choose from composite, vqa_accuracy"),
        (  # one name in the logs and in the sum of parts
            "composite,my_rewards:composite",
            "reward.components: 'composite' and 'my_rewards:composite' both log as 'composite'; give each reward "
            "its own function name",
        ),
    ],
)
def test_a_bad_import_path_is_refused_at_load_with_one_line(user_module, component, says, capsys):
    with pytest.raises(UserError) as err:
        vqa_grpo.load_config(None, [f"reward.components=[{component}]"])
    assert str(err.value).startswith(says) and "\n" not in str(err.value)
    assert main(["train", f"reward.components=[{component}]"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {says}")


def test_two_python_functions_of_one_name_are_two_rewards(user_module, tmp_path):
    """reward_funcs=[a.brevity, b.brevity]: the second keeps its name brevity_2 (and no import path,
    which would log it as brevity again), so each is scored and logged on its own."""
    from vqa_grpo.api import _named, _recorded, _with_rewards

    (tmp_path / "more_rewards.py").write_text(
        "def brevity(completions, **kwargs):\n    return [0.25] * len(completions)\n"
    )
    import more_rewards

    named = _named([user_module.brevity, more_rewards.brevity])
    cfg = vqa_grpo.load_config(None, ["reward.components=[vqa_accuracy]"])
    cfg, pathless = _recorded(_with_rewards(cfg, named, None), named)
    assert cfg.reward.components == ["vqa_accuracy", "my_rewards:brevity", "brevity_2"]
    assert cfg.reward.python_functions == ["brevity_2"] and list(pathless) == ["brevity_2"]
    r = score(cfg.reward.components[1:], [1.0, 1.0], functions=pathless)
    # brevity: one word -> 1 ("red", "skip"), else 0; brevity_2: 0.25 each
    assert r.parts["brevity"].tolist() == [1.0, 0.0, 1.0] and r.parts["brevity_2"].tolist() == [0.25] * 3
    assert r.total.tolist() == [1.25, 0.25, 1.25]


def _train_args(tiny_model_dir, synth_dir, run_dir, components, weights, steps=1):
    return [
        "train",
        f"model.name_or_path={tiny_model_dir}",
        f"data.path={synth_dir}",
        f"train.output_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.per_device_batch_size=2",
        "grpo.num_generations=2",
        "grpo.max_completion_length=4",
        "train.save_steps=1",
        "train.progress=false",
        "data.max_eval_samples=2",
        "train.logging_steps=1",
        f"reward.components=[{components}]",
        f"reward.weights=[{weights}]",
    ]


def test_a_run_logs_each_function_and_its_seconds(user_module, tiny_model_dir, synth_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, synth_dir, run_dir, "vqa_accuracy,my_rewards:brevity", "0.8,0.2")) == 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in metrics if "reward/brevity" in m)
    assert 0.0 <= step["reward/brevity"] <= 1.0 and step["reward_seconds/brevity"] >= 0.0
    sample = json.loads((run_dir / "completions.jsonl").read_text().splitlines()[0])
    assert set(sample["reward_parts"]) == {"vqa_accuracy", "brevity"} and len(sample["reward_parts"]["brevity"]) == 2


def test_a_function_failing_mid_run_stops_with_one_line_and_exit_1(
    user_module, tiny_model_dir, synth_dir, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert main(_train_args(tiny_model_dir, synth_dir, run_dir, "my_rewards:fails_second_time", "1.0", steps=3)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "error: reward function fails_second_time raised ValueError: bad batch (batch starting at example "
    )
    assert not (run_dir / "final").exists()
    ckpt = run_dir / "checkpoint-1"  # the step before: saved, complete, and it resumes
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()


def test_reward_funcs_from_python(tiny_model_dir, synth_dir, tmp_path):
    def length_penalty(completions, **kwargs):
        return [-0.1 * len(c.split()) for c in completions]

    cfg = vqa_grpo.load_config(
        None, _train_args(tiny_model_dir, synth_dir, tmp_path / "run", "vqa_accuracy", "1.0")[1:]
    )
    result = vqa_grpo.train(cfg, reward_funcs=[length_penalty], reward_weights=[0.9, 0.1])
    assert result.steps == 1
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/length_penalty" in m for m in metrics)
    with pytest.raises(UserError, match=r"reward weights: 1 for 2 reward components \(vqa_accuracy, length_penalty\)"):
        vqa_grpo.train(cfg, reward_funcs=[length_penalty], reward_weights=[1.0])


def test_a_function_as_an_evaluation_metric(user_module, tiny_model_dir, synth_dir, tmp_path):
    cfg = vqa_grpo.load_config(
        None,
        [
            "eval.metrics=[my_rewards:brevity,my_rewards:picky]",
            "train.eval_metric=brevity",
            "train.progress=false",
            "eval.bootstrap_samples=10",
        ],
    )
    rows = [json.loads(line) for line in (synth_dir / "data.jsonl").read_text().splitlines()[:6]]
    data = [{**r, "image": str(synth_dir / r["image"])} for r in rows]
    cfg.data.allow_outside_root = True
    metrics = vqa_grpo.evaluate(tiny_model_dir, data, cfg, tmp_path / "eval")
    assert 0.0 <= metrics["brevity"] <= 1.0 and metrics["picky"] == 0.5 and metrics["n"] == 6
    assert "brevity" in metrics["per_answer_type"][rows[0]["answer_type"]]
    written = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["picky"] == 0.5 and r["brevity"] in (0.0, 1.0) for r in written)
    with pytest.raises(UserError, match="eval.metrics: 'brevity' is neither a metric"):
        vqa_grpo.load_config(None, ["eval.metrics=[brevity]"])
