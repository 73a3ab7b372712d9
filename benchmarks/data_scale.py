"""Start-up time and host memory of ``vqa-grpo train`` on a data set of VQA v2 train's size.

    python benchmarks/data_scale.py [--dir DIR] [--questions 443757] [--formats vqa_v2,jsonl,parquet,hf]
        [--measure cold,warm,load] [--json]

Builds, once under ``--dir`` (kept for the next call), a synthetic set with VQA v2 train's shape:
``--questions`` questions (443,757 by default) on the proportional number of images (82,783 at
full size; each a small JPEG file in COCO's layout, ``train2014/COCO_train2014_<id>.jpg``), ten
answers per question, written as the official question/annotation JSON pair, as JSONL, as Parquet
and as a local Hub-layout folder read as ``hf:FOLDER``. Then, for each format, each in a fresh
process:

- ``first step`` (cold): seconds from the launch of ``vqa-grpo train`` (tiny Qwen2-VL, CPU) to its
  first step's line in metrics.jsonl, with the data's caches removed first (the loaded-examples
  index beside the data, and datasets' cache for hf:); RSS is the process's resident memory then;
- ``first step`` (warm): the same launch again, the caches in place;
- ``load``: ``load_vqa`` alone under tracemalloc (warm): the Python memory the loaded examples hold
  after the load (``held``), its peak during the load, Arrow's own allocations, and RSS.

``--measure`` picks among cold, warm and load. With ``--json`` the last line is one JSON object:
``{"questions", "images", "formats": {FORMAT: {"cold": ..., "warm": ..., "load": ...}}}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_QUESTIONS, FULL_IMAGES = 443_757, 82_783
FORMATS = ("vqa_v2", "jsonl", "parquet", "hf")
_WORDS = (
    "what color is the man woman dog cat table bus train sign shirt wall sky plate food person "
    "holding wearing sitting standing on in of left right near behind how many people are there "
    "is this a kitchen street room field water tree car bike horse giraffe elephant pizza"
).split()
_OTHER = "red blue white black green brown tennis baseball kitchen pizza frisbee surfing skiing wood".split()


def build(root: Path, n: int) -> dict[str, str]:
    """The four copies of the set under ``root`` (made once; a marker file records the size)."""
    marker = root / f"built-{n}.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    images = max(1, round(n * FULL_IMAGES / FULL_QUESTIONS))
    rng = random.Random(0)
    folder = root / "images" / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    blobs = [_jpeg(i) for i in range(16)]
    image_ids = [9 + 7 * k for k in range(images)]
    for k, image_id in enumerate(image_ids):
        (folder / f"COCO_train2014_{image_id:012d}.jpg").write_bytes(blobs[k % 16])
    questions, annotations, rows = [], [], []
    for q in range(n):
        image_id = image_ids[q * images // n]
        qid = image_id * 1000 + q % 1000
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 9))) + "?"
        kind = rng.random()
        if kind < 0.38:
            answer_type, pool = "yes/no", ["yes", "no"]
        elif kind < 0.5:
            answer_type, pool = "number", [str(i) for i in range(12)]
        else:
            answer_type, pool = "other", _OTHER
        answers = [rng.choice(pool) for _ in range(10)]
        qtype = " ".join(text.split()[:2])
        best = max(answers, key=answers.count)
        questions.append({"image_id": image_id, "question": text, "question_id": qid})
        annotations.append(
            {
                "question_type": qtype,
                "multiple_choice_answer": best,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
                ],
                "image_id": image_id,
                "answer_type": answer_type,
                "question_id": qid,
            }
        )
        rows.append(
            {
                "id": str(qid),
                "image": f"train2014/COCO_train2014_{image_id:012d}.jpg",
                "question": text,
                "answers": answers,
                "answer": best,
                "answer_type": answer_type,
                "question_type": qtype,
            }
        )
    pair = root / "vqa_v2"
    pair.mkdir(exist_ok=True)
    info = {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "train2014"}
    (pair / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps({**info, "questions": questions}))
    (pair / "v2_mscoco_train2014_annotations.json").write_text(json.dumps({**info, "annotations": annotations}))
    del questions, annotations
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / "train.parquet")
    (root / "hf" / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "hf" / "data" / "train-00000-of-00001.parquet")
    paths = {
        "vqa_v2": str(pair),
        "jsonl": str(root / "train.jsonl"),
        "parquet": str(root / "train.parquet"),
        "hf": f"hf:{root / 'hf'}",
    }
    marker.write_text(json.dumps({"paths": paths, "images": images}))
    return json.loads(marker.read_text())


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (seed * 15 % 256, seed * 40 % 256, seed * 90 % 256)).save(out, "JPEG")
    return out.getvalue()


def _clear_caches(root: Path, path: str) -> None:
    """The loaded-examples index beside the data, and datasets' cache of the hf: copy."""
    for cache in root.rglob(".vqa_grpo_cache"):
        shutil.rmtree(cache, ignore_errors=True)
    if path.startswith("hf:"):
        shutil.rmtree(root / "hf_datasets_cache", ignore_errors=True)


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_CACHE": str(root / "hf_datasets_cache"), "HF_HUB_OFFLINE": "1"}


def _data_keys(root: Path, path: str) -> list[str]:
    return [f"data.path={path}", f"data.image_root={root / 'images'}"]


def first_step(root: Path, path: str, model: Path, out: Path) -> dict[str, float]:
    """Seconds from launch to the first step's line in metrics.jsonl, and RSS (MiB) then."""
    shutil.rmtree(out, ignore_errors=True)
    args = [
        *_data_keys(root, path),
        f"model.name_or_path={model}",
        f"train.output_dir={out}",
        "train.device=cpu",
        "train.cpu_threads=1",
        "train.progress=false",
        "train.max_steps=1000",
        "train.per_device_batch_size=2",
        "grpo.num_generations=2",
        "grpo.max_completion_length=4",
        "train.report_to=none",
    ]
    code = "import sys; from vqa_grpo.cli import main; sys.exit(main(sys.argv[1:]))"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, "train", *args], env=_env(root), stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    try:
        while not (metrics.is_file() and metrics.read_text().strip()):
            if proc.poll() is not None:
                raise SystemExit(f"train exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        rss = _status(proc.pid, "VmRSS")
        cpu = _cpu_seconds(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return {"first_step_s": round(seconds, 2), "cpu_s": round(cpu, 2), "rss_mib": round(rss, 1)}


def _cpu_seconds(pid: int | str) -> float:
    """The process's user + system CPU seconds (all its threads): on a busy machine the wall
    clock also counts the time other processes held the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(pid: int | str, key: str) -> float:
    """A /proc/PID/status memory figure in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_load(root: Path, path: str) -> dict[str, float]:
    """``load_vqa`` under tracemalloc in this process: seconds, MiB held and peak, Arrow's, RSS."""
    import tracemalloc

    import pyarrow as pa

    from vqa_grpo.config_load import load_config
    from vqa_grpo.data.loader import load_vqa

    cfg = load_config(None, _data_keys(root, path))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    cpu = _cpu_seconds("self")
    data = load_vqa(cfg.data, seed=0)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds("self") - cpu
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mib = 1024 * 1024
    return {
        "load_s": round(seconds, 2),
        "load_cpu_s": round(cpu, 2),
        "train": len(data.train),
        "eval": len(data.eval),
        "held_mib": round((held - before) / mib, 1),
        "peak_mib": round((peak - before) / mib, 1),
        "arrow_mib": round(pa.total_allocated_bytes() / mib, 1),
        "rss_mib": round(_status("self", "VmRSS"), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "vqa_grpo_data_scale"))
    parser.add_argument("--questions", type=int, default=FULL_QUESTIONS, help="questions (default: 443757)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of " + ",".join(FORMATS))
    parser.add_argument(
        "--measure", default="cold,warm,load", help="comma-separated subset of cold,warm,load (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--measure-load", help=argparse.SUPPRESS)  # the child process's side
    args = parser.parse_args()
    root = Path(args.dir) / f"q{args.questions}"
    root.mkdir(parents=True, exist_ok=True)
    if args.measure_load:
        print(json.dumps(measure_load(root, args.measure_load)))
        return 0
    start = time.perf_counter()
    built = build(root, args.questions)
    took = time.perf_counter() - start
    print(f"data: {args.questions} questions on {built['images']} images under {root} ({took:.1f} s)")
    model = root / "tiny"
    if not (model / "config.json").is_file():
        from vqa_grpo.models.tiny import build_tiny

        build_tiny("qwen2_vl", model, seed=0)
    results = {}
    for fmt in args.formats.split(","):
        path = built["paths"][fmt]
        measure, result = args.measure.split(","), {}
        _clear_caches(root, path)
        for kind in ("cold", "warm"):
            if kind in measure:
                result[kind] = first_step(root, path, model, root / f"run-{os.getpid()}")
                r = result[kind]
                print(f"{fmt:>8}: first step {r['first_step_s']:5.1f} s {kind} (CPU {r['cpu_s']:.1f} s, ", end="")
                print(f"{r['rss_mib']:.0f} MiB RSS)", flush=True)
        if "load" in measure:
            child = [sys.executable, __file__, "--dir", args.dir, "--questions", str(args.questions)]
            done = subprocess.run([*child, "--measure-load", path], env=_env(root), capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"load of {fmt} failed: {done.stderr[-2000:]}")
            load = result["load"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{fmt:>8}: load {load['load_s']:.1f} s (CPU {load['load_cpu_s']:.1f} s), examples hold "
                f"{load['held_mib']:.0f} MiB (peak {load['peak_mib']:.0f}, Arrow {load['arrow_mib']:.0f}), RSS "
                f"{load['rss_mib']:.0f} MiB, {load['train']} train + {load['eval']} eval",
                flush=True,
            )
        results[fmt] = result
    if args.json:
        print(json.dumps({"questions": args.questions, "images": built["images"], "formats": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
