"""Silent or misleading behaviour a user can meet, each through the command or API
they used: skipped rows reported, adapters found from anywhere, a family that does not fit its
checkpoint refused, duplicate rewards refused, a mistyped column refused, JSON non-text skipped,
a corrupt config.json named as such."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image

from vqa_grpo.cli import main


def assert_one_line_error(rc: int, err: str, expected: str) -> None:
    assert rc == 2, err
    assert err == f"error: {expected}\n"


def png_that_fails_to_decode(size: int = 16) -> bytes:
    """A PNG whose chunks and checksums are valid (PIL's verify passes) but whose pixel data is
    not zlib: the row is kept at load and fails when training decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib") + chunk(b"IEND", b"")


def sft_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sft",
        f"model.name_or_path={model}",
        f"data.path={data}",
        f"train.output_dir={out}",
        "train.device=cpu",
        "train.cpu_threads=1",
        "train.progress=false",
        "train.save_steps=0",
        "train.report_to=none",
        "data.eval_fraction=0",
        "train.per_device_batch_size=2",
        *extra,
    ]


# ---- a. skipped rows are told: a line, skipped.json, metrics.jsonl -----------------------------


def test_sft_reports_rows_skipped_at_load_and_in_training(synth_dir, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = [json.loads(x) for x in (synth_dir / "data.jsonl").read_text().splitlines()[:6]]
    for r in rows:
        shutil.copy(synth_dir / r["image"], data / r["image"])
    good = rows[0]
    (data / "images" / "cut.png").write_bytes((synth_dir / good["image"]).read_bytes()[:60])
    (data / "images" / "late.png").write_bytes(png_that_fails_to_decode())
    rows += [
        {**good, "id": "gone", "image": "images/nowhere.png"},  # missing_image at load
        {**good, "id": "cut", "image": "images/cut.png"},  # corrupt_image at load
        {**good, "id": "late", "image": "images/late.png"},  # kept; fails when a batch decodes it
    ]
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    # 7 kept, batches of 2: 4 steps visit all of them once (the bad one is met and skipped)
    rc = main(sft_args(data, tiny_model_dir, out, "train.max_steps=4", "data.max_skip_fraction=0.3"))
    err = capsys.readouterr().err
    assert rc == 0, err
    where = out / "skipped.json"
    assert [x for x in err.splitlines() if x.startswith("sft:")] == [
        f"sft: 2 of 9 rows skipped (missing_image 1, corrupt_image 1); ids and reasons in {where}",
        f"sft: 3 of 9 rows skipped (corrupt_image 2, missing_image 1): 2 when the data loaded, "
        f"1 skipped in training (corrupt_image 1); 6 left to train on; ids and reasons in {where}",
    ]
    report = json.loads(where.read_text())
    assert {k: report[k] for k in ("rows", "skipped", "by_reason", "in_training", "left")} == {
        "rows": 9,
        "skipped": 3,
        "by_reason": {"corrupt_image": 2, "missing_image": 1},
        "in_training": {"corrupt_image": 1},
        "left": 6,
    }
    assert [(e["id"], e["reason"], e["when"]) for e in report["examples"]] == [
        ("gone", "missing_image", "load"),
        ("cut", "corrupt_image", "load"),
        ("late", "corrupt_image", "training"),
    ]
    assert report["examples"][0]["row"] == 7 and "images/nowhere.png not found" in report["examples"][0]["detail"]
    assert report["examples"][2]["detail"].startswith("image failed to load: OSError")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_rows"] for r in lines][-1] == 3 and lines[0]["skipped_rows"] in (2, 3)


# ---- d. a reward named twice ----------------------------------------------------------------


def test_a_reward_component_named_twice_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    rc = main(
        ["train", "reward.components=[composite,composite]", "reward.weights=[0.5,0.5]", f"train.output_dir={out}"]
    )
    assert_one_line_error(
        rc,
        capsys.readouterr().err,
        "reward.components names 'composite' twice; name each reward once (weigh it with reward.weights)",
    )
    assert not out.exists()


# ---- e. a mistyped column mapping ---------------------------------------------------------------


def test_a_mapped_column_absent_from_the_data_is_refused(synth_dir, tiny_model_dir, capsys, tmp_path):
    out = tmp_path / "run"
    rc = main(sft_args(synth_dir, tiny_model_dir, out, "data.columns.answers=typo"))
    assert_one_line_error(
        rc,
        capsys.readouterr().err,
        f"data.columns.answers='typo' is not a column of {synth_dir} (jsonl) (columns: answer, answer_type, "
        "answers, id, image, question, question_type, scene); set it to one of them, or drop it to use the "
        "default 'answers'",
    )
    assert not out.exists()


# ---- f. JSON numbers and booleans where text belongs -------------------------------------------


def test_json_non_text_question_or_boolean_answer_is_skipped_and_counted(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [
        {"id": "ok", "image": "a.png", "question": "How many?", "answer": 2},  # a number answer is its text
        {"id": "n", "image": "a.png", "question": 42, "answer": "yes"},
        {"id": "t", "image": "a.png", "question": "Is it?", "answer": True},
        {"id": "l", "image": "a.png", "question": "Is it?", "answer": "yes", "answers": ["yes", False]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "inspect", str(path), "--json", "data.max_skip_fraction=1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["kept"]) == (4, 1)
    assert {k: n for k, n in report["skipped"].items() if n} == {"question_not_text": 1, "answer_not_text": 2}
    assert main(["data", "inspect", str(path), "data.max_skip_fraction=1"]) == 0
    table = capsys.readouterr().out
    assert "row 2 (id n): question 42" in table and "row 3 (id t): a true/false answer" in table


# ---- b. a LoRA adapter found from another directory ---------------------------------------------


def test_a_lora_adapter_trained_from_a_relative_path_loads_from_anywhere(
    synth_dir, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    (launch / "models").mkdir(parents=True)
    elsewhere.mkdir()
    (launch / "models" / "tiny").symlink_to(tiny_model_dir)
    data = tmp_path / "four.jsonl"  # 4 questions of the synthetic set, images by absolute path
    rows = [json.loads(x) for x in (synth_dir / "data.jsonl").read_text().splitlines()[:4]]
    data.write_text("".join(json.dumps({**r, "image": str(synth_dir / r["image"])}) + "\n" for r in rows))
    monkeypatch.chdir(launch)
    args = sft_args(data, Path("models/tiny"), Path("runs/lora"), "train.max_steps=1", "model.lora=true")
    assert main([*args, "model.lora_r=2", "data.allow_outside_root=true"]) == 0
    final = launch / "runs" / "lora" / "final"
    adapter_config = final / "adapter_config.json"
    recorded = json.loads(adapter_config.read_text())
    assert recorded["base_model_name_or_path"] == str(launch / "models" / "tiny")  # absolute, not as typed

    monkeypatch.chdir(elsewhere)
    evaluate = ["evaluate", "--model", str(final), "--data", str(data), "data.allow_outside_root=true"]
    assert main([*evaluate, "train.progress=false"]) == 0
    # An adapter that records its base as typed (relative, as saved before): found through the run's
    # config.yaml, whose train.output_dir (runs/lora) was relative to the launch directory.
    adapter_config.write_text(json.dumps({**recorded, "base_model_name_or_path": "models/tiny"}))
    assert main([*evaluate, "train.progress=false"]) == 0
    assert main(["merge", str(final), "--out", "merged"]) == 0
    assert (elsewhere / "merged" / "config.json").is_file()
    capsys.readouterr()
    adapter_config.write_text(json.dumps({**recorded, "base_model_name_or_path": "./gone/tiny"}))
    rc = main([*evaluate, "train.progress=false"])
    assert_one_line_error(
        rc,
        capsys.readouterr().err,
        f"the LoRA adapter {final} names its base model by the relative path './gone/tiny', which is not there "
        f"from the current directory nor from the adapter's; set base_model_name_or_path in {adapter_config} to "
        "the base model's absolute path",
    )


# ---- c. a family that does not fit the checkpoint ------------------------------------------------


def test_a_family_that_does_not_fit_the_checkpoint_is_refused(synth_dir, tiny_model_dir, capsys, tmp_path):
    from vqa_grpo.models.adapters import adapter_for

    out = tmp_path / "run"
    rc = main(sft_args(synth_dir, tiny_model_dir, out, "model.family=llava"))
    assert_one_line_error(
        rc,
        capsys.readouterr().err,
        "model.family=llava does not fit this checkpoint, whose config.json has model_type='qwen2_vl'; "
        "set model.family=auto (or qwen2_vl or qwen2_5_vl, or generic)",
    )
    assert not out.exists()
    # The names of one adapter, generic, and a family for a model type with no adapter of its own stay allowed.
    assert adapter_for("qwen2_vl", "qwen2_5_vl").name == adapter_for("qwen2_5_vl", "qwen2_vl").name == "qwen2_vl"
    assert adapter_for("smolvlm", "idefics3").name == "idefics3" and adapter_for("llava_next", "llava").name == "llava"
    assert adapter_for("qwen2_vl", "generic").name == "generic"
    assert adapter_for("some_new_vlm", "llava").name == "llava"


# ---- g. a corrupt config.json -----------------------------------------------------------------


def test_a_config_json_that_is_not_json_is_named_as_such(synth_dir, tiny_model_dir, capsys, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text('{"model_type": "qwen2_vl"')  # cut short
    rc = main(["evaluate", "--model", str(model), "--data", str(synth_dir)])
    assert_one_line_error(
        rc,
        capsys.readouterr().err,
        f"config.json in {model} is not valid JSON (line 1, column 26: Expecting ',' delimiter); restore it from "
        "the model's download or save the model again",
    )
