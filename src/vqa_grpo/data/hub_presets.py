"""The Hub presets of ``data.path=hf:NAME`` (hub.py): how each VQA dataset's columns map to the
loader's fields, and where its schema was read. docs/data_hub.md has the table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """How one Hub dataset's columns map to the loader's fields."""

    hub_id: str
    title: str
    columns: dict[str, str]
    """ColumnsConfig field -> the column holding it (after ``transform``); unnamed fields keep the
    loader's defaults (an absent column: row-number ids, answer = most common of answers, types
    inferred)."""
    splits: tuple[str, ...]
    """The split names the Hub card lists."""
    source: str
    """Where the schema was read."""
    notes: str = ""
    derived: dict[str, str] = field(default_factory=dict)
    """Fields the transform computes, with how (for ``data inspect``)."""
    default_config: str | None = None
    """The config used when data.config_name is unset (repositories without a default one)."""
    split_alias: dict[str, str] = field(default_factory=dict)
    """Our split name -> the Hub's (``validation`` -> ``val``)."""
    transform: Callable[[dict[str, Any]], None] | None = None
    """Edits a row's values in place, before the column mapping."""
    config_per_split: str | None = None
    """GQA: each split is its own config; this template names it from the split."""
    images_config: tuple[str, str] | None = None
    """GQA: the images live in a separate config, found by replacing the first string of the
    instructions config's name with the second; rows are joined on ``join_key`` = its ``id``."""
    join_key: str = ""
    benchmark: str | None = None
    """The benchmark the data is (data/benchmarks.py): its metric, prompt and answer length."""
    config_benchmarks: dict[str, str] = field(default_factory=dict)
    """A config -> its benchmark, where it differs from ``benchmark`` (DocVQA's InfographicVQA)."""
    aliases: tuple[str, ...] = ()
    """Other Hub ids of the same data (lmms-eval's ``lmms-lab-encoder/*`` copies)."""
    forms: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    """A benchmark -> {field: (column, how the transform makes it)} that this form of the data reads
    instead (A-OKVQA's multiple choice, data.benchmark=aokvqa_mc)."""


def _join_types(values: dict[str, Any]) -> None:  # DocVQA: question_types is a list of categories
    types = values.get("question_types")
    if isinstance(types, (list, tuple)) and types:
        values["question_type"] = ", ".join(str(t) for t in types)


_CHART_ORIGIN = {0: "human", 1: "machine"}  # ChartQA's ClassLabel names


def _chart_origin(values: dict[str, Any]) -> None:
    origin = values.get("human_or_machine")
    values["question_type"] = _CHART_ORIGIN.get(origin, origin if isinstance(origin, str) else None)


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _multiple_choice(values: dict[str, Any]) -> None:
    """A-OKVQA's multiple-choice form, as lmms-eval's multiple-choice tasks write it (ai2d):
    the question, then one "A. choice" line per choice; the answers are the correct letter and text."""
    choices, index = values.get("choices"), values.get("correct_choice_idx")
    if hasattr(choices, "tolist"):
        choices = choices.tolist()
    if not isinstance(choices, (list, tuple)) or not choices or len(choices) > len(LETTERS):
        return  # no choices: the form's columns stay absent, and the row is skipped as empty
    lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    values["mc_question"] = f"{values.get('question') or ''}\n{lines}"
    if isinstance(index, int) and 0 <= index < len(choices):
        values["mc_answers"] = [LETTERS[index], str(choices[index])]


PRESETS: dict[str, Preset] = {p.hub_id: p for p in (
    Preset(
        "lmms-lab/VQAv2", "VQA v2",
        columns=dict(id="question_id", question="question", answer="multiple_choice_answer", answers="answers",
                     answer_type="answer_type", question_type="question_type", image="image"),
        splits=("validation", "testdev", "test"),
        source="dataset card YAML, https://huggingface.co/datasets/lmms-lab/VQAv2/blob/main/README.md "
               "(answers: list of {answer, answer_confidence, answer_id})",
        notes="no train split on this repository; testdev and test carry no answers (the official server "
              "scores them), so only validation trains or evaluates. HuggingFaceM4/VQAv2 is a loading "
              "script, which datasets 4+ no longer runs.",
        benchmark="vqav2",
        aliases=("lmms-lab-encoder/VQAv2",),
    ),
    Preset(
        "lmms-lab/textvqa", "TextVQA",
        columns=dict(id="question_id", question="question", answers="answers", image="image"),
        splits=("train", "validation", "test"),
        source="dataset card YAML of lmms-lab/textvqa (as duplicated at "
               "https://huggingface.co/datasets/pppop7/textvqa/blob/main/README.md) and lmms-eval "
               "lmms_eval/tasks/textvqa (dataset_path lmms-lab/textvqa; doc['answers'], doc['question_id'])",
        notes="answers: the 10 annotators' strings; answer = the most common. The test split has no answers.",
        benchmark="textvqa",
        aliases=("lmms-lab-encoder/textvqa",),
    ),
    Preset(
        "lmms-lab/DocVQA", "DocVQA",
        columns=dict(id="questionId", question="question", answers="answers", question_type="question_type",
                     image="image"),
        splits=("validation", "test"),
        source="dataset card YAML, https://huggingface.co/datasets/lmms-lab/DocVQA/blob/main/README.md "
               "(configs DocVQA and InfographicVQA)",
        notes="two configs and no default: DocVQA unless data.config_name=InfographicVQA. The train split "
              "is commented out of the card; the test split has no answers.",
        derived={"question_type": "question_types, joined with ', '"},
        default_config="DocVQA",
        transform=_join_types,
        benchmark="docvqa",
        config_benchmarks={"InfographicVQA": "infovqa"},
        aliases=("lmms-lab-encoder/DocVQA",),
    ),
    Preset(
        "HuggingFaceM4/ChartQA", "ChartQA",
        columns=dict(question="query", answers="label", question_type="question_type", image="image"),
        splits=("train", "val", "test"),
        source="dataset card YAML, https://huggingface.co/datasets/HuggingFaceM4/ChartQA/blob/main/README.md "
               "(query: string, label: list of strings, human_or_machine: ClassLabel human/machine)",
        notes="no id column: ids are row numbers. data.split=validation reads the Hub's val. question_type "
              "is ChartQA's human/machine origin, so reports break accuracy down the way ChartQA does.",
        derived={"question_type": "human_or_machine: 0 -> human, 1 -> machine"},
        split_alias={"validation": "val"},
        transform=_chart_origin,
        benchmark="chartqa",
    ),
    Preset(
        "lmms-lab/ChartQA", "ChartQA (lmms-eval's copy)",
        columns=dict(question="question", answer="answer", question_type="type", image="image"),
        splits=("test",),
        source="lmms-eval lmms_eval/tasks/chartqa (chartqa.yaml: dataset_path lmms-lab-encoder/ChartQA, test_split "
               "test; utils.py: doc['question'], doc['answer'], doc['type'] human_test/augmented_test) and its "
               "upload_chartqa.py features (type, question, answer: string, image)",
        notes="the test split only, one answer per question; question_type is lmms-eval's split of the score "
              "(human_test, augmented_test). No id column: ids are row numbers.",
        benchmark="chartqa",
        aliases=("lmms-lab-encoder/ChartQA",),
    ),
    Preset(
        "lmms-lab/OK-VQA", "OK-VQA",
        columns=dict(id="question_id", question="question", answers="answers", answer_type="answer_type",
                     question_type="question_type", image="image"),
        splits=("val2014",),
        source="dataset card YAML, https://huggingface.co/datasets/lmms-lab/OK-VQA/blob/main/README.md",
        notes="one split, val2014 (data.split=validation reads it). HuggingFaceM4/OK-VQA is a loading "
              "script, which datasets 4+ no longer runs.",
        split_alias={"validation": "val2014"},
        benchmark="okvqa",
        aliases=("lmms-lab-encoder/OK-VQA",),
    ),
    Preset(
        "lmms-lab/GQA", "GQA",
        columns=dict(id="id", question="question", answer="answer", image="image"),
        splits=("train", "val", "testdev", "test", "challenge"),
        source="dataset card YAML, https://huggingface.co/datasets/lmms-lab/GQA/blob/main/README.md "
               "(configs <split>_{all,balanced}_{instructions,images}) and lmms-eval "
               "lmms_eval/tasks/gqa (testdev_balanced_instructions joined to testdev_balanced_images on imageId)",
        notes="questions and images are separate configs: the preset reads <split>_balanced_instructions and "
              "joins <split>_balanced_images on imageId, which downloads that images config too; it needs "
              "data.streaming=false. data.split=validation reads val; test and "
              "challenge have no answers. data.config_name=<split>_all_instructions reads the unbalanced set.",
        derived={"image": "<split>_balanced_images: the image whose id is imageId"},
        split_alias={"validation": "val"},
        config_per_split="{split}_balanced_instructions",
        images_config=("_instructions", "_images"),
        join_key="imageId",
        benchmark="gqa",
        aliases=("lmms-lab-encoder/GQA",),
    ),
    Preset(
        "HuggingFaceM4/A-OKVQA", "A-OKVQA",
        columns=dict(id="question_id", question="question", answers="direct_answers", image="image"),
        splits=("train", "validation", "test"),
        source="HELM src/helm/benchmark/scenarios/vision_language/a_okvqa_scenario.py (splits, choices, "
               "correct_choice_idx) and load_dataset('HuggingFaceM4/A-OKVQA') printouts in public code "
               "(direct_answers is a string holding a Python list)",
        notes="answers: the 10 direct answers (the string is parsed as a list); answer = the most common. "
              "data.benchmark=aokvqa_mc reads the multiple-choice form: the question followed by its lettered "
              "choices (A. ..., one a line), answers [letter, choice text] of correct_choice_idx. The test split "
              "has no answers.",
        transform=_multiple_choice,
        benchmark="aokvqa",
        forms={
            "aokvqa_mc": {
                "question": ("mc_question", "question and the lettered choices"),
                "answers": ("mc_answers", "[letter, text] of correct_choice_idx"),
            }
        },
    ),
    Preset(
        "lmms-lab/VizWiz-VQA", "VizWiz",
        columns=dict(id="question_id", question="question", answers="answers", question_type="category",
                     image="image"),
        splits=("val", "test"),
        source="dataset card YAML, https://huggingface.co/datasets/lmms-lab/VizWiz-VQA/blob/main/README.md "
               "(question_id, image, question, answers: list of strings, category) and lmms-eval "
               "lmms_eval/tasks/vizwiz_vqa (dataset_path lmms-lab-encoder/VizWiz-VQA, test_split val; "
               "doc['question'], doc['answers'], doc['question_id'])",
        notes="answers: the 10 annotators' strings, \"unanswerable\" among them; question_type is the category "
              "(unanswerable, yes/no, number, other). data.split=validation reads val; test has no answers.",
        split_alias={"validation": "val"},
        benchmark="vizwiz",
        aliases=("lmms-lab-encoder/VizWiz-VQA",),
    ),
)}  # fmt: skip

_SCRIPT_SUCCESSORS = {
    "HuggingFaceM4/VQAv2": "lmms-lab/VQAv2",
    "HuggingFaceM4/OK-VQA": "lmms-lab/OK-VQA",
    "facebook/textvqa": "lmms-lab/textvqa",
    "textvqa": "lmms-lab/textvqa",
}
"""Hub repositories that are loading scripts (which datasets 4+ refuses) and a parquet one to use."""
