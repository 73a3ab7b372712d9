"""``vqa-grpo score PREDICTIONS.jsonl``: table, JSON, per answer type, bad rows, bad files."""

import json

import pytest

from vqa_grpo.cli import main
from vqa_grpo.errors import UserError
from vqa_grpo.evaluation.score import score_file

ROWS = [
    {"prediction": "yes", "answers": ["yes"] * 10, "answer_type": "yes/no"},
    {"prediction": "no", "answers": ["yes"] * 10, "answer_type": "yes/no"},
    {"prediction": "2", "answers": ["2"] * 10},  # type inferred: number
    {"prediction": "red", "answers": [{"answer": "red"}] * 10},  # VQA v2 answer records; inferred other
]


def write(tmp_path, lines):
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_json_output_overall_and_per_type(tmp_path, capsys):
    bad = [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"prediction": "x"}),
        json.dumps({"prediction": 3, "answers": ["3"]}),
    ]
    path = write(tmp_path, [json.dumps(r) for r in ROWS] + bad + [""])
    assert main(["score", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["rows"], out["skipped"], out["skipped_lines"]) == (4, 4, [5, 6, 7, 8])
    m = out["metrics"]
    assert m["overall"]["n"] == 4
    assert m["overall"]["vqa_accuracy"] == pytest.approx(0.75)  # 1 + 0 + 1 + 1 over 4
    assert m["yes/no"] == {**m["yes/no"], "n": 2, "vqa_accuracy": 0.5, "composite/exact_match": 0.5}
    assert m["number"]["n"] == 1 and m["other"]["n"] == 1


def test_table_output(tmp_path, capsys):
    path = write(tmp_path, [json.dumps(r) for r in ROWS])
    assert main(["score", path]) == 0
    out = capsys.readouterr().out
    assert "4 rows scored, 0 skipped" in out
    overall = next(line for line in out.splitlines() if line.startswith("overall"))
    assert overall.split()[1:3] == ["4", "75.00"]  # n, vqa_accuracy in percent


def test_custom_fields(tmp_path, capsys):
    path = write(tmp_path, [json.dumps({"out": "red", "gt": "red"})])  # a lone string is one answer
    main(["score", path, "--prediction-field", "out", "--answers-field", "gt", "--json"])
    assert json.loads(capsys.readouterr().out)["metrics"]["overall"]["composite/exact_match"] == 1.0


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        score_file(str(tmp_path / "nope.jsonl"))


def test_directory_and_binary_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        score_file(str(tmp_path))
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="cannot read"):
        score_file(str(binary))


def test_no_usable_row_is_a_user_error(tmp_path):
    path = write(tmp_path, ["{}", "[]"])
    with pytest.raises(UserError, match="no scorable rows") as err:
        score_file(path)
    assert "\n" not in str(err.value)
