"""``vqa-grpo data inspect``: the table, the --json object, overrides and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vqa_grpo.cli import main
from vqa_grpo.data.loader import SKIP_REASONS
from vqa_grpo.errors import UserError


def inspect_cli(path: str, fmt: str | None, image_root: str | None, as_json: bool, overrides: list[str]) -> int:
    """``vqa-grpo --debug data inspect ...``: --debug lets a UserError through whole."""
    options = [*(["--format", fmt] if fmt else []), *(["--image-root", image_root] if image_root else [])]
    return main(["--debug", "data", "inspect", path, *options, *(["--json"] if as_json else []), *overrides])


def write_set(folder: Path, image_key: str = "image", n_good: int = 9, n_missing: int = 1) -> Path:
    (folder / "pics").mkdir(parents=True)
    Image.new("RGB", (24, 16), "red").save(folder / "pics" / "a.png")
    rows = [
        {"id": f"g{i}", image_key: "pics/a.png", "question": f"How many dogs? ({i})", "answer": str(i)}
        for i in range(n_good)
    ]
    rows += [
        {"id": f"m{i}", image_key: "pics/gone.png", "question": "Is it here?", "answer": "no"} for i in range(n_missing)
    ]
    path = folder / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_names_counts_skips_and_first_five_examples(tmp_path, capsys):
    path = write_set(tmp_path / "d", n_good=9, n_missing=1)
    assert inspect_cli(str(path), None, None, False, []) == 0
    out = capsys.readouterr().out
    assert "10 rows read, 9 kept, 1 skipped" in out
    assert "missing_image" in out and "pics/gone.png" in out
    assert "kept by answer type: yes/no 0, number 9, other 0" in out
    assert "first 5 of 9 examples:" in out
    assert out.count("answer type: number") == 5
    assert "[g4] How many dogs? (4)" in out and "[g5]" not in out
    assert "(24x16 after loading)" in out


def test_json_is_one_object_with_the_seven_keys(tmp_path, capsys):
    path = write_set(tmp_path / "d", n_good=9, n_missing=1)
    assert inspect_cli(str(path), None, None, True, []) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "rows": 10,
        "kept": 9,
        "skipped": {**dict.fromkeys(SKIP_REASONS, 0), "missing_image": 1},
        "answer_types": {"yes/no": 0, "number": 9, "other": 0},
        "max_images": 1,
        "videos": 0,
        "benchmark": {  # no benchmark: the seed report's reward, metric, prompt and length
            "benchmark": None,
            "reward": ["composite"],
            "eval_metric": "vqa_accuracy",
            "prompt": "{question} Answer with a single word or short phrase.",
            "max_new_tokens": 16,
        },
    }


def test_overrides_format_and_image_root(tmp_path, capsys):
    path = write_set(tmp_path / "d", image_key="img", n_good=3, n_missing=0)
    with pytest.raises(UserError, match="data.columns.image"):
        inspect_cli(str(path), None, None, True, [])
    capsys.readouterr()
    assert inspect_cli(str(path), "jsonl", str(tmp_path / "d"), True, ["data.columns.image=img"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 3
    with pytest.raises(UserError, match="data.format='xml'"):
        inspect_cli(str(path), "xml", None, True, ["data.columns.image=img"])


def test_too_many_skips_prints_the_report_then_fails(tmp_path, capsys):
    path = write_set(tmp_path / "d", n_good=3, n_missing=3)
    with pytest.raises(UserError) as info:
        inspect_cli(str(path), None, None, True, [])
    assert "\n" not in str(info.value) and "data.max_skip_fraction" in str(info.value)
    assert json.loads(capsys.readouterr().out)["skipped"]["missing_image"] == 3
    assert inspect_cli(str(path), None, None, True, ["data.max_skip_fraction=0.5"]) == 0


def test_cli_exit_codes(tmp_path, capsys):
    path = write_set(tmp_path / "d", n_good=9, n_missing=1)  # 10% skipped: at the limit, allowed
    assert main(["data", "inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 9
    assert main(["data", "inspect", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
