"""The Hub presets of ``data.path=hf:NAME`` (hub.py): how each VQA dataset's columns map to the
loader's fields, and where its schema was read. docs/data_hub.md has the table."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vqa_grpo.data.types import IMAGE_PLACEHOLDER


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
    videos_outside: str = ""
    """Where the videos are when the parquet files hold only their names (Video-MME: zip archives
    of the repository); the transform names each row's file relative to the folder they were
    unzipped into, data.image_root (a local copy's own folder by default)."""
    video_suffixes: tuple[str, ...] = ()
    """Suffixes tried in order, after the transform's, when a row's video file does not exist."""


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


def _options(values: dict[str, Any]) -> list[str] | None:
    """The row's ``options`` as a list of strings, or None when there are none (or too many to letter)."""
    options = values.get("options")
    if hasattr(options, "tolist"):
        options = options.tolist()
    if not isinstance(options, (list, tuple)) or not options or len(options) > len(LETTERS):
        return None
    return [str(o) for o in options]


def _letter(values: dict[str, Any], n: int) -> str | None:
    """The row's ``answer`` when it is the letter of one of its ``n`` options (either case)."""
    answer = str(values.get("answer") or "").strip().upper()
    return answer if len(answer) == 1 and answer in LETTERS[:n] else None


def _muirbench(values: dict[str, Any]) -> None:
    """MuirBench as lmms-eval's ``muir_doc_to_text`` writes it: the question, then one "A. option"
    line per option, the images at their ``<image>`` marks (in the question or in the options,
    in order: the loader checks the count against image_list; MuirBench's mark is vqa-grpo's
    IMAGE_PLACEHOLDER, so the text is kept as written). The answers are the answer letter
    and its option's text; an option that is an image has no text to name it by, so its letter
    stands in for the text, and writing "<image>" is never a right answer."""

    options = _options(values)
    if options is None:
        return  # no options: the form's columns stay absent, and the row is skipped as empty
    question = str(values.get("question") or "")
    values["mc_question"] = question + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    letter = _letter(values, len(options))
    if letter is not None:
        text = options[LETTERS.index(letter)]
        values["mc_answers"] = [letter, letter if IMAGE_PLACEHOLDER in text else text]


_OPTION_MARK = re.compile(r"^[A-Z][.)]\s*")


def _videomme(values: dict[str, Any]) -> None:
    """Video-MME as lmms-eval's ``videomme_doc_to_text`` writes it: the question, then its options
    one a line (each already "A. text"); the answers are the answer letter and its option's text.
    The video is ``data/<videoID>.mp4`` under the folder the archives were unzipped into, the path
    lmms-eval's ``videomme_doc_to_visual`` reads."""
    options = _options(values)
    if options is not None:
        values["mc_question"] = f"{values.get('question') or ''}\n" + "\n".join(options)
        letter = _letter(values, len(options))
        if letter is not None:
            values["mc_answers"] = [letter, _OPTION_MARK.sub("", options[LETTERS.index(letter)]).strip()]
    video_id = values.get("videoID")
    if isinstance(video_id, str) and video_id.strip():
        values["video_file"] = f"data/{video_id.strip()}.mp4"


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
    Preset(
        "MUIRBENCH/MUIRBENCH", "MuirBench",
        columns=dict(id="idx", question="mc_question", answers="mc_answers", question_type="task",
                     image="image_list"),
        splits=("test",),
        source="lmms-eval lmms_eval/tasks/muirbench at commit 75571cfe (muirbench.yaml: dataset_path "
               "MUIRBENCH/MUIRBENCH, test_split test; utils.py: doc['question'], doc['options'] a list, "
               "doc['answer'] a letter, doc['image_list'] a list of images, doc['task'], doc['idx']); the "
               "card's configs (data/test-*) from its Hub commit 9191cbf; <image> marks in the question and "
               "options, one per image, as public MuirBench loaders count them",
        notes="the test split only (2,600 questions, 2 to 9 images each). question = the question and its "
              "lettered options; the images sit at their <image> marks, in the question or in an option. "
              "answers = [letter, option text] (the letter again for an image option); question_type = task.",
        derived={"question": "question, then one 'A. option' line per option",
                 "answers": "[answer letter, its option's text]"},
        transform=_muirbench,
        benchmark="muirbench",
    ),
    Preset(
        "lmms-lab/Video-MME", "Video-MME",
        columns=dict(id="question_id", question="mc_question", answers="mc_answers", question_type="task_type",
                     video="video_file"),
        splits=("test",),
        source="lmms-eval lmms_eval/tasks/videomme at commit 75571cfe (videomme.yaml: test_split test; "
               "utils.py: doc['question'], doc['options'] a list of 'A. text', doc['answer'] a letter, "
               "doc['videoID'], doc['question_id'], doc['task_type'], doc['duration']; videos read from "
               "<unzipped>/data/<videoID>.mp4, .MP4 or .mkv) and lmms_eval/api/task.py (a video dataset's zip "
               "archives unzipped into one folder); the repository's files (parquet under videomme/, one "
               "config; videos_chunked_*.zip, subtitle.zip) from its Hub file listing",
        notes="the test split only; the parquet rows name their video, the videos are in the repository's "
              "videos_chunked_*.zip archives: unzip them into a folder and set data.image_root to it "
              "(it then holds data/<videoID>.mp4). Subtitles are not used. question = the question and its "
              "options; answers = [letter, option text]; question_type = task_type.",
        derived={"question": "question, then its options one a line",
                 "answers": "[answer letter, its option's text]",
                 "video": "data/<videoID>.mp4 under data.image_root"},
        transform=_videomme,
        benchmark="videomme",
        aliases=("lmms-eval/Video-MME",),
        videos_outside="the repository's videos_chunked_*.zip archives",
        video_suffixes=(".MP4", ".mkv"),
    ),
)}  # fmt: skip

_SCRIPT_SUCCESSORS = {
    "HuggingFaceM4/VQAv2": "lmms-lab/VQAv2",
    "HuggingFaceM4/OK-VQA": "lmms-lab/OK-VQA",
    "facebook/textvqa": "lmms-lab/textvqa",
    "textvqa": "lmms-lab/textvqa",
}
"""Hub repositories that are loading scripts (which datasets 4+ refuses) and a parquet one to use."""
