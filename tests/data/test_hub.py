"""Hub datasets (``data.path=hf:NAME``): each preset, on a local repository that stands for it; and
the repository builders and the offline fixture that the other Hub tests import. Streaming, eval
splits and no preset: test_hub_loading_options.py; inspect and errors: test_hub_inspect_and_errors.py.

Offline: every repository is a tmp folder laid out as a Hub dataset repository (parquet shards
under data/ or <config>/, a README.md with YAML ``configs:`` where the real card has one), with the
column names and types of the Hub dataset it stands for, read through the same
``datasets.load_dataset`` call as a Hub id. The datasets cache lives in tmp and offline mode is on,
so no test touches the network or ~/.cache.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import datasets
import huggingface_hub
import pytest
from datasets import ClassLabel, Dataset, Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image

from vqa_grpo.config_load import load_config
from vqa_grpo.data.hub import PRESETS, find_preset
from vqa_grpo.data.images import StoredImage
from vqa_grpo.data.loader import SKIP_REASONS, load_examples
from vqa_grpo.errors import UserError


@pytest.fixture(autouse=True)
def offline_tmp_cache(tmp_path, monkeypatch):
    """datasets' cache in tmp, and offline mode on (datasets reads both once, at import)."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def image_cell(size: tuple[int, int], color: str, fmt: str = "PNG") -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return {"bytes": buf.getvalue(), "path": None}


def write_repo(root: Path, configs: dict[str, dict[str, Dataset]], card: bool = True) -> Path:
    """``configs`` (config -> split -> rows) as parquet shards; config "default" goes under data/.

    With ``card`` a README.md lists the configs and data files, as the Hub cards do; without it the
    default layout (data/<split>-00000-of-00001.parquet) names the splits.
    """
    yaml = ["---", "configs:"]
    for config, splits in configs.items():
        folder = "data" if config == "default" else config
        yaml += [f"- config_name: {config}", "  data_files:"]
        for split, ds in splits.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(root / folder / f"{split}-00000-of-00001.parquet"))
            yaml += [f"  - split: {split}", f"    path: {folder}/{split}-*"]
    if card:
        (root / "README.md").write_text("\n".join(yaml + ["---", "", "A local copy laid out as a Hub dataset."]) + "\n")
    return root


def hf(root: Path) -> str:
    return f"hf:{root}"


def load(root: Path, *overrides: str):
    cfg = load_config(None, [f"data.path={hf(root)}", *overrides]).data
    return load_examples(cfg.path, cfg)


def by_id(examples):
    return {e.id: e for e in examples}


def written(cache: Path) -> list[Path]:
    """The Arrow and parquet files the datasets cache holds."""
    return [p for p in cache.rglob("*") if p.suffix in (".arrow", ".parquet")] if cache.exists() else []


def fields(e) -> tuple:
    return (e.question, e.answers, e.answer, e.answer_type, e.question_type)


# ---------------------------------------------------------------------------------------------
# One repository per preset, with the Hub dataset's column names and types.

VQAV2_FEATURES = Features({
    "question_type": Value("string"), "multiple_choice_answer": Value("string"),
    "answers": List({"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}),
    "image_id": Value("int64"), "answer_type": Value("string"), "question_id": Value("int64"),
    "question": Value("string"), "image": ImageFeature(),
})  # fmt: skip


def vqav2_repo(root: Path) -> Path:
    def answers(*texts):
        return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]

    rows = {
        "question_type": ["is the", "how many", "what color is the"],
        "multiple_choice_answer": ["yes", "2", "red"],
        "answers": [answers("yes", "yes", "no"), answers("2", "two", "2"), answers("red", "dark red", "red")],
        "image_id": [9, 9, 10],
        "answer_type": ["yes/no", "number", "other"],
        "question_id": [90001, 90002, 100001],
        "question": ["Is the square red?", "How many squares?", "What color is the bus?"],
        "image": [image_cell((32, 24), "red"), image_cell((32, 24), "red"), image_cell((40, 30), "blue", "JPEG")],
    }
    return write_repo(root, {"default": {"validation": Dataset.from_dict(rows, features=VQAV2_FEATURES)}})


def test_vqav2_preset_maps_every_field(tmp_path):
    root = vqav2_repo(tmp_path / "lmms-lab" / "VQAv2")
    examples, report = load(root, "data.split=validation", "data.preset=lmms-lab/VQAv2")
    assert (report.rows, report.kept, report.skipped) == (3, 3, dict.fromkeys(SKIP_REASONS, 0))
    ex = by_id(examples)
    assert list(ex) == ["90001", "90002", "100001"]
    assert fields(ex["90001"]) == ("Is the square red?", ["yes", "yes", "no"], "yes", "yes/no", "is the")
    assert fields(ex["90002"]) == ("How many squares?", ["2", "two", "2"], "2", "number", "how many")
    assert fields(ex["100001"]) == (
        "What color is the bus?",
        ["red", "dark red", "red"],
        "red",
        "other",
        "what color is the",
    )
    assert [ex[i].load_image().size for i in ex] == [(32, 24), (32, 24), (40, 30)]
    assert ex["90001"].load_image().getpixel((0, 0)) == (255, 0, 0)
    assert all(isinstance(e.image_loader.source, StoredImage) for e in examples)  # re-read, not held
    assert pickle.loads(pickle.dumps(examples))[2].load_image().size == (40, 30)  # for data-loader workers


def test_textvqa_preset_takes_the_most_common_of_ten_answers(tmp_path):
    features = Features({
        "image_id": Value("string"), "question_id": Value("int32"), "question": Value("string"),
        "question_tokens": List(Value("string")), "image": ImageFeature(), "image_width": Value("int32"),
        "image_height": Value("int32"), "flickr_original_url": Value("string"), "flickr_300k_url": Value("string"),
        "answers": List(Value("string")), "image_classes": List(Value("string")), "set_name": Value("string"),
        "ocr_tokens": List(Value("string")),
    })  # fmt: skip
    rows = {
        "image_id": ["003a8ae2ef43b901"], "question_id": [34602], "question": ["what brand is this phone?"],
        "question_tokens": [["what", "brand", "is", "this", "phone"]], "image": [image_cell((50, 20), "white")],
        "image_width": [50], "image_height": [20], "flickr_original_url": ["u"], "flickr_300k_url": ["u3"],
        "answers": [["nokia"] * 7 + ["nokia phone"] * 3], "image_classes": [["phone"]], "set_name": ["val"],
        "ocr_tokens": [["NOKIA"]],
    }  # fmt: skip
    root = write_repo(tmp_path / "textvqa", {"default": {"validation": Dataset.from_dict(rows, features=features)}})
    examples, report = load(root, "data.split=validation", "data.preset=lmms-lab/textvqa")
    (ex,) = examples
    assert ex.id == "34602"
    assert fields(ex) == (
        "what brand is this phone?",
        ["nokia"] * 7 + ["nokia phone"] * 3,
        "nokia",
        "other",
        "what brand",
    )
    assert ex.load_image().size == (50, 20)


def docvqa_repo(root: Path) -> Path:
    doc = Features({
        "questionId": Value("string"), "question": Value("string"), "question_types": List(Value("string")),
        "image": ImageFeature(), "docId": Value("int64"), "ucsf_document_id": Value("string"),
        "ucsf_document_page_no": Value("string"), "answers": List(Value("string")), "data_split": Value("string"),
    })  # fmt: skip
    info = Features({
        "questionId": Value("string"), "question": Value("string"), "answers": List(Value("string")),
        "answer_type": List(Value("string")), "image": ImageFeature(), "image_url": Value("string"),
        "operation/reasoning": List(Value("string")), "ocr": Value("string"), "data_split": Value("string"),
    })  # fmt: skip
    doc_rows = {
        "questionId": ["49153", "24581"], "question": ["What is the date mentioned?", "How many pages?"],
        "question_types": [["handwritten", "form"], ["layout"]], "image": [image_cell((60, 80), "white")] * 2,
        "docId": [14465, 1], "ucsf_document_id": ["pybv0228", "x"], "ucsf_document_page_no": ["81", "1"],
        "answers": [["1/8/93", "1/8/1993"], ["3"]], "data_split": ["val", "val"],
    }  # fmt: skip
    info_rows = {
        "questionId": ["98313"], "question": ["Which country has the most users?"], "answers": [["india"]],
        "answer_type": [["single span"]], "image": [image_cell((30, 90), "green")], "image_url": ["u"],
        "operation/reasoning": [[]], "ocr": ["{}"], "data_split": ["val"],
    }  # fmt: skip
    return write_repo(
        root,
        {
            "DocVQA": {"validation": Dataset.from_dict(doc_rows, features=doc)},
            "InfographicVQA": {"validation": Dataset.from_dict(info_rows, features=info)},
        },
    )


def test_docvqa_preset_reads_the_docvqa_config_by_default(tmp_path):
    root = docvqa_repo(tmp_path / "DocVQA")
    examples, _ = load(root, "data.split=validation", "data.preset=lmms-lab/DocVQA")
    ex = by_id(examples)
    assert list(ex) == ["49153", "24581"]
    assert fields(ex["49153"]) == (
        "What is the date mentioned?",
        ["1/8/93", "1/8/1993"],
        "1/8/93",
        "other",
        "handwritten, form",
    )
    assert fields(ex["24581"]) == ("How many pages?", ["3"], "3", "number", "layout")
    assert ex["49153"].load_image().size == (60, 80)
    info, _ = load(root, "data.split=validation", "data.preset=lmms-lab/DocVQA", "data.config_name=InfographicVQA")
    (ex,) = info
    assert (ex.id, fields(ex)) == ("98313", ("Which country has the most users?", ["india"], "india", "other", "which"))
    assert ex.load_image().size == (30, 90)


def chartqa_repo(root: Path, broken: bool = False) -> Path:
    features = Features({
        "image": ImageFeature(), "query": Value("string"), "label": List(Value("string")),
        "human_or_machine": ClassLabel(names=["human", "machine"]),
    })  # fmt: skip
    val = {
        "image": [image_cell((64, 48), "white"), image_cell((64, 48), "gray")],
        "query": ["Is the value of Favorable 38 in 2015?", "How many bars are there?"],
        "label": [["Yes"], ["6"]], "human_or_machine": [0, 1],
    }  # fmt: skip
    if broken:  # one cut PNG: the loader's corrupt_image skip, as for local files
        png = image_cell((64, 48), "white")["bytes"]
        val = {
            k: v + [x] for (k, v), x in zip(val.items(), [{"bytes": png[:40], "path": None}, "What is it?", ["a"], 0])
        }
    train = {k: v[:1] for k, v in val.items()}
    splits = {"train": Dataset.from_dict(train, features=features), "val": Dataset.from_dict(val, features=features)}
    return write_repo(root, {"default": splits}, card=False)  # no card: the default data/ layout


def test_chartqa_preset_reads_val_for_validation_and_its_origin_as_question_type(tmp_path):
    root = chartqa_repo(tmp_path / "ChartQA")
    examples, _ = load(root, "data.split=validation", "data.preset=HuggingFaceM4/ChartQA")
    ex = by_id(examples)
    assert list(ex) == ["row1", "row2"]  # ChartQA has no id column
    assert fields(ex["row1"]) == ("Is the value of Favorable 38 in 2015?", ["Yes"], "Yes", "yes/no", "human")
    assert fields(ex["row2"]) == ("How many bars are there?", ["6"], "6", "number", "machine")
    assert ex["row2"].load_image().getpixel((0, 0)) == (128, 128, 128)
    sliced, _ = load(root, "data.split=validation[1:]", "data.preset=HuggingFaceM4/ChartQA")  # datasets' slices
    assert [(e.id, e.question) for e in sliced] == [("row1", "How many bars are there?")]
    with pytest.raises(
        UserError, match=r"^data.split='validation\[1:\]': a stream cannot be sliced; drop the \[...\] or set"
    ):
        load(root, "data.split=validation[1:]", "data.preset=HuggingFaceM4/ChartQA", "data.streaming=true")


def test_hub_rows_are_skipped_for_the_same_reasons_as_local_rows(tmp_path):
    root = chartqa_repo(tmp_path / "ChartQA", broken=True)
    with pytest.raises(UserError, match="1 of 3 rows .* were skipped"):
        load(root, "data.split=validation", "data.preset=HuggingFaceM4/ChartQA")
    examples, report = load(root, "data.split=val", "data.preset=HuggingFaceM4/ChartQA", "data.max_skip_fraction=0.5")
    assert (report.rows, report.kept) == (3, 2)
    assert report.skipped == {**dict.fromkeys(SKIP_REASONS, 0), "corrupt_image": 1}
    assert report.samples["corrupt_image"][0].startswith("row 3 (id row3): embedded image (40 bytes)")


def test_okvqa_preset_reads_val2014_for_validation(tmp_path):
    features = Features({
        "question_id": Value("string"), "image": ImageFeature(), "question": Value("string"),
        "answers": List(Value("string")), "question_type": Value("string"), "answer_type": Value("string"),
    })  # fmt: skip
    rows = {
        "question_id": ["2971475"], "image": [image_cell((20, 20), "yellow")],
        "question": ["What sport can you use this for?"], "answers": [["race", "race", "motocross"]],
        "question_type": ["one"], "answer_type": ["other"],
    }  # fmt: skip
    root = write_repo(tmp_path / "OK-VQA", {"default": {"val2014": Dataset.from_dict(rows, features=features)}})
    (ex,), _ = load(root, "data.split=validation", "data.preset=lmms-lab/OK-VQA")
    assert (ex.id, fields(ex)) == (
        "2971475",
        ("What sport can you use this for?", ["race", "race", "motocross"], "race", "other", "one"),
    )
    assert ex.load_image().size == (20, 20)


def gqa_repo(root: Path) -> Path:
    instr = Features({
        "id": Value("string"), "imageId": Value("string"), "question": Value("string"), "answer": Value("string"),
        "fullAnswer": Value("string"), "isBalanced": Value("bool"),
    })  # fmt: skip
    images = Features({"id": Value("string"), "image": ImageFeature()})
    configs = {}
    for split, offset in (("val", 0), ("testdev", 100)):
        questions = {
            "id": [f"{offset + 1}", f"{offset + 2}", f"{offset + 3}"], "imageId": ["n1", "n2", "n1"],
            "question": ["Is the sky blue?", "What is on the table?", "Which color is the car?"],
            "answer": ["yes", "cup", "red"],
            "fullAnswer": ["Yes, the sky is blue.", "A cup is on the table.", "The car is red."],
            "isBalanced": [True, True, True],
        }  # fmt: skip
        pictures = {"id": ["n2", "n1"], "image": [image_cell((12, 6), "black"), image_cell((10, 8), "blue")]}
        configs[f"{split}_balanced_instructions"] = {split: Dataset.from_dict(questions, features=instr)}
        configs[f"{split}_balanced_images"] = {split: Dataset.from_dict(pictures, features=images)}
    return write_repo(root, configs)


def test_gqa_preset_joins_the_images_config_on_image_id(tmp_path):
    root = gqa_repo(tmp_path / "GQA")
    examples, _ = load(root, "data.split=validation", "data.preset=lmms-lab/GQA")
    ex = by_id(examples)
    assert list(ex) == ["1", "2", "3"]
    assert fields(ex["1"]) == ("Is the sky blue?", ["yes"], "yes", "yes/no", "is the")
    assert fields(ex["2"]) == ("What is on the table?", ["cup"], "cup", "other", "what is on the")
    assert [ex[i].load_image().size for i in ex] == [(10, 8), (12, 6), (10, 8)]
    testdev, _ = load(root, "data.split=testdev", "data.preset=lmms-lab/GQA")
    assert [e.id for e in testdev] == ["101", "102", "103"]
    with pytest.raises(UserError, match=r"data.split='train' is not a split of .*GQA .*choose one of testdev, val$"):
        load(root, "data.split=train", "data.preset=lmms-lab/GQA")
    with pytest.raises(UserError, match="separate config, which a stream cannot join; set data.streaming=false"):
        load(root, "data.split=val", "data.preset=lmms-lab/GQA", "data.streaming=true")


def aokvqa_repo(root: Path) -> Path:
    features = Features({
        "image": ImageFeature(), "question_id": Value("string"), "question": Value("string"),
        "choices": List(Value("string")), "correct_choice_idx": Value("int8"), "direct_answers": Value("string"),
        "difficult_direct_answer": Value("bool"), "rationales": List(Value("string")),
    })  # fmt: skip

    def rows(qid, question, direct, choices, idx, color):
        return {"image": [image_cell((16, 12), color)], "question_id": [qid], "question": [question],
                "choices": [choices], "correct_choice_idx": [idx], "direct_answers": [direct],
                "difficult_direct_answer": [False], "rationales": [["He has bags."]]}  # fmt: skip

    train = rows("22MexNkBPpdZGX6sxbxVBH", "What is the man by the bags awaiting?",
                 "['ride', 'ride', 'bus', 'taxi', 'travelling', 'traffic', 'taxi', 'cab', 'cab', 'his ride']",
                 ["skateboarder", "train", "delivery", "cab"], 3, "white")  # fmt: skip
    val = rows("22jbM6gDxdaMaunuzgrsBB", "What is in the motorcyclist's mouth?", str(["cigarette"] * 10),
               ["toothpick", "food", "popsicle stick", "cigarette"], 3, "red")  # fmt: skip
    return write_repo(
        root,
        {
            "default": {
                "train": Dataset.from_dict(train, features=features),
                "validation": Dataset.from_dict(val, features=features),
            }
        },
    )


AOK_TRAIN_ANSWERS = ["ride", "ride", "bus", "taxi", "travelling", "traffic", "taxi", "cab", "cab", "his ride"]


def test_aokvqa_preset_parses_the_direct_answers_string(tmp_path):
    root = aokvqa_repo(tmp_path / "A-OKVQA")
    (ex,), _ = load(root, "data.split=train", "data.preset=HuggingFaceM4/A-OKVQA")
    assert ex.id == "22MexNkBPpdZGX6sxbxVBH"
    assert fields(ex) == (
        "What is the man by the bags awaiting?",
        AOK_TRAIN_ANSWERS,
        "ride",
        "other",
        "what is the man",
    )
    assert ex.load_image().size == (16, 12)
    (ex,), _ = load(root, "data.split=train", "data.preset=HuggingFaceM4/A-OKVQA", "data.columns.answers=choices")
    assert (ex.answers, ex.answer) == (
        ["skateboarder", "train", "delivery", "cab"],
        "skateboarder",
    )  # the user's key wins


def test_a_preset_is_found_by_its_hub_id_in_any_letter_case(tmp_path):
    assert find_preset(None, "lmms-lab/vqav2") is PRESETS["lmms-lab/VQAv2"]  # data.path=hf:<id> needs no data.preset
    assert find_preset("none", "lmms-lab/VQAv2") is None
    assert find_preset(None, str(tmp_path)) is None
    examples, _ = load(vqav2_repo(tmp_path / "v"), "data.split=validation", "data.preset=LMMS-LAB/vqav2")
    assert examples[0].answer == "yes"


def test_every_preset_is_tested_here():
    # lmms-lab/ChartQA, /VizWiz-VQA: test_hub_benchmarks.py; MuirBench, Video-MME: test_hub_multi.py
    assert set(PRESETS) == {"lmms-lab/VQAv2", "lmms-lab/textvqa", "lmms-lab/DocVQA", "HuggingFaceM4/ChartQA",
                            "lmms-lab/OK-VQA", "lmms-lab/GQA", "HuggingFaceM4/A-OKVQA", "MUIRBENCH/MUIRBENCH",
                            "lmms-lab/ChartQA", "lmms-lab/VizWiz-VQA", "lmms-lab/Video-MME"}  # fmt: skip
    assert all(p.source and p.splits for p in PRESETS.values())
