"""Hub datasets (``data.path=hf:NAME``): what ``data inspect`` shows, and bad input (one line with
the fix, exit 2, nothing written).

Offline, on tmp repositories laid out as Hub dataset repositories (test_hub.py builds them).
"""

from __future__ import annotations

import json
import time

import datasets
import pytest
from datasets.exceptions import DatasetNotFoundError
from test_hub import chartqa_repo, docvqa_repo, hf, load, offline_tmp_cache, vqav2_repo, written  # noqa: F401  the fixture too

from vqa_grpo.cli import main
from vqa_grpo.config import ConfigError, DataConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.hub import _user_error
from vqa_grpo.data.loader import load_examples
from vqa_grpo.errors import UserError


def inspect_cli(path: str, fmt: str | None, image_root: str | None, as_json: bool, overrides: list[str]) -> int:
    """``vqa-grpo --debug data inspect ...``: --debug lets a UserError through whole."""
    options = [*(["--format", fmt] if fmt else []), *(["--image-root", image_root] if image_root else [])]
    return main(["--debug", "data", "inspect", path, *options, *(["--json"] if as_json else []), *overrides])


# ---------------------------------------------------------------------------------------------
# data inspect.


def test_inspect_shows_the_preset_and_the_column_mapping(tmp_path, capsys):
    root = chartqa_repo(tmp_path / "ChartQA")
    assert inspect_cli(hf(root), None, None, False, ["data.split=validation", "data.preset=HuggingFaceM4/ChartQA"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"hf:{root}  config (default)  split val (data.split=validation)"
    assert lines[1] == "preset: HuggingFaceM4/ChartQA"
    assert lines[2:9] == [
        "  image          <- image",
        "  question       <- query",
        "  answer         <- (no column 'answer': the most common of answers)",
        "  answers        <- label",
        "  question_type  <- question_type (made from human_or_machine: 0 -> human, 1 -> machine)",
        "  answer_type    <- (no column 'answer_type': inferred from the answers)",
        "  id             <- (no column 'id': row numbers (row<N>))",
    ]
    assert f"hf:{root} (split val): 2 rows read, 2 kept, 0 skipped" in out
    assert "[row2] How many bars are there?" in out and "answer type: number   question type: machine" in out


def test_inspect_json_adds_the_mapping(tmp_path, capsys):
    root = vqav2_repo(tmp_path / "VQAv2")
    assert inspect_cli(hf(root), None, None, True, ["data.split=validation", "data.preset=lmms-lab/VQAv2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["rows"], out["kept"]) == (3, 3)
    assert out["source"]["preset"] == "lmms-lab/VQAv2"
    assert out["source"]["columns"] == {
        "image": "image", "question": "question", "answer": "multiple_choice_answer", "answers": "answers",
        "question_type": "question_type", "answer_type": "answer_type", "id": "question_id",
    }  # fmt: skip
    assert (out["source"]["config"], out["source"]["split"], out["source"]["streaming"]) == (None, "validation", False)
    assert set(out["source"]) == {
        "dataset",
        "config",
        "split",
        "asked_split",
        "streaming",
        "preset",
        "columns",
        "notes",
    }


# ---------------------------------------------------------------------------------------------
# Bad input: one line with the fix, exit 2, nothing written.


def one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


def test_unknown_preset_lists_the_known(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.preset=lmms-lab/VQAv3"])
    assert one_line(info) == (
        "data.preset='lmms-lab/VQAv3' is not a known preset; choose one of lmms-lab/VQAv2, lmms-lab/textvqa, "
        "lmms-lab/DocVQA, HuggingFaceM4/ChartQA, lmms-lab/ChartQA, lmms-lab/OK-VQA, lmms-lab/GQA, "
        "HuggingFaceM4/A-OKVQA, lmms-lab/VizWiz-VQA, MUIRBENCH/MUIRBENCH, lmms-lab/Video-MME, or none"
    )
    assert main(["data", "inspect", "hf:lmms-lab/VQAv2", "data.preset=VQAv3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.preset='VQAv3' is not a known preset") and err.count("\n") == 1


def test_hub_name_while_offline_fails_fast_with_the_fix(offline_tmp_cache, capsys):
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        load_examples("hf:nobody-xyz/no-such-vqa-set", DataConfig(split="validation"))
    assert time.monotonic() - start < 5
    assert one_line(info) == (
        "cannot load hf:nobody-xyz/no-such-vqa-set from the Hugging Face Hub (offline mode is on "
        "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the datasets cache); check the name and "
        "the network, or download it once and set data.path=hf:<local folder>"
    )
    assert main(["data", "inspect", "hf:nobody-xyz/no-such-vqa-set"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert written(offline_tmp_cache) == []


def test_missing_split_names_the_available_and_writes_nothing(tmp_path, offline_tmp_cache, capsys):
    root = chartqa_repo(tmp_path / "ChartQA")
    with pytest.raises(UserError) as info:
        load(root, "data.split=validaton", "data.preset=HuggingFaceM4/ChartQA")
    assert one_line(info) == f"data.split='validaton' is not a split of {root}; choose one of train, val"
    with pytest.raises(UserError, match=r"data.split='test' is not a split of .*; choose one of train, val"):
        load(root, "data.split=test", "data.streaming=true", "data.preset=HuggingFaceM4/ChartQA")
    capsys.readouterr()  # the fixture's to_parquet progress bars
    assert main(["data", "inspect", hf(root), "data.split=dev"]) == 2
    assert capsys.readouterr().err == f"error: data.split='dev' is not a split of {root}; choose one of train, val\n"
    assert written(offline_tmp_cache) == []


def test_missing_or_unknown_config_names_the_configs(tmp_path):
    root = docvqa_repo(tmp_path / "DocVQA")
    with pytest.raises(UserError) as info:
        load(root, "data.split=validation")  # no preset: nothing picks the config
    assert one_line(info) == f"{root} has several configs (DocVQA, InfographicVQA); set data.config_name to one of them"
    with pytest.raises(UserError) as info:
        load(root, "data.split=validation", "data.config_name=Docvqa", "data.preset=lmms-lab/DocVQA")
    assert (
        one_line(info) == f"data.config_name='Docvqa' is not a config of {root}; choose one of DocVQA, InfographicVQA"
    )


def test_loading_script_repositories_point_to_the_parquet_one(tmp_path):
    root = tmp_path / "HuggingFaceM4" / "VQAv2"
    root.mkdir(parents=True)
    (root / "VQAv2.py").write_text("import datasets\n")
    with pytest.raises(UserError) as info:
        load(root, "data.split=validation")
    assert one_line(info) == (
        f"{root} is a dataset loading script, which datasets 4+ no longer runs; use data.path=hf:lmms-lab/VQAv2 "
        "(parquet)"
    )


def test_a_name_the_hub_does_not_have(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as datasets raises it when online
    error = DatasetNotFoundError("Dataset 'nobody-xyz/nope' doesn't exist on the Hub or cannot be accessed.")
    assert str(_user_error(error, "nobody-xyz/nope", None, "train", None)) == (
        "hf:nobody-xyz/nope was not found on the Hugging Face Hub (Dataset 'nobody-xyz/nope' doesn't exist on "
        "the Hub or cannot be accessed.); check the name (owner/name), or log in for a gated or private dataset"
    )
    gated = DatasetNotFoundError(
        "Dataset 'org/private-vqa' is a gated dataset on the Hub. You must be authenticated to access it."
    )
    assert str(_user_error(gated, "org/private-vqa", None, "train", None)).endswith(
        "; accept its terms on the dataset page and log in (hf auth login)"
    )
    unreachable = ConnectionError("Couldn't reach 'nobody-xyz/nope' on the Hub (LocalEntryNotFoundError)")
    assert "(no network); check the name and the network" in str(
        _user_error(unreachable, "nobody-xyz/nope", None, "train", None)
    )


def test_other_bad_hub_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no data files datasets can read"):
        load(tmp_path / "empty")
    with pytest.raises(UserError, match="data.format='parquet' does not apply to hf:"):
        load(chartqa_repo(tmp_path / "c"), "data.format=parquet")
    with pytest.raises(UserError, match="names no dataset; write hf:NAME"):
        load_examples("hf:", DataConfig())
    with pytest.raises(UserError, match=r"data.preset='lmms-lab/VQAv2' applies to hf: paths; read .* as data.path=hf:"):
        load_examples(str(tmp_path), DataConfig(preset="lmms-lab/VQAv2"))
    with pytest.raises(ConfigError, match="data.split is empty"):
        load_config(None, ["data.split="])
