"""Hub presets of several images and of video: MuirBench (MUIRBENCH/MUIRBENCH) and Video-MME
(lmms-lab/Video-MME), loaded end to end through their presets, and their benchmarks' prompts and metric.

Offline, on tmp repositories laid out as the Hub stores them (test_hub.py builds them and holds the
offline fixture). The column names and cell types are those lmms-eval's task code reads, at
lmms-eval commit 75571cfe (data/benchmarks.py LMMS_EVAL_COMMIT):

- MuirBench: lmms_eval/tasks/muirbench/muirbench.yaml (dataset_path MUIRBENCH/MUIRBENCH, test_split
  test) and utils.py (doc["question"], doc["options"] a list of strings, doc["answer"] a letter,
  doc["image_list"] a list of images, doc["task"], doc["idx"], doc["image_relation"],
  doc["image_type"]); the card's configs (one, data/test-*). Its question and options mark each
  image's place with "<image>".
- Video-MME: lmms_eval/tasks/videomme/videomme.yaml (test_split test) and utils.py (doc["question"],
  doc["options"] a list of "A. text", doc["answer"] a letter, doc["videoID"], doc["question_id"],
  doc["task_type"], doc["duration"], doc["domain"], doc["sub_category"]; the video read from
  <unzipped archives>/data/<videoID>.mp4, .MP4 or .mkv); the repository keeps its parquet under
  videomme/ and its videos in zip archives.
"""

from __future__ import annotations

from fractions import Fraction

import av
import pytest
from datasets import Dataset, Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image
from test_hub import hf, image_cell, load, offline_tmp_cache, write_repo  # noqa: F401

from vqa_grpo.config_load import load_config
from vqa_grpo.data.benchmarks import resolve
from vqa_grpo.data.hub import PRESETS, hub_source
from vqa_grpo.data.loader import SKIP_REASONS, load_examples
from vqa_grpo.data.prompts import prompt_template, user_text
from vqa_grpo.data.types import Video
from vqa_grpo.errors import UserError
from vqa_grpo.rewards.choice import choice_batch

MC = "\nAnswer with the option's letter from the given choices directly."


def skips(**counts: int) -> dict[str, int]:
    return {**dict.fromkeys(SKIP_REASONS, 0), **counts}


# ---------------------------------------------------------------------------------------------
# MuirBench: several images per question, at the <image> marks of the question and options.

MUIR_FEATURES = Features({
    "idx": Value("string"), "task": Value("string"), "image_relation": Value("string"),
    "image_type": Value("string"), "question": Value("string"), "options": List(Value("string")),
    "answer": Value("string"), "image_list": List(ImageFeature()),
})  # fmt: skip


def muir_repo(root):
    cut = image_cell((8, 8), "white")["bytes"][:30]  # a PNG cut short: the row's second image is bad
    rows = [
        ("1", "Counting", "How many mittens are in each image?", ["Four", "Three", "None of the choices provided"],
         "B", [image_cell((20, 10), "red"), image_cell((12, 30), "blue", "JPEG")]),
        ("2", "Visual Retrieval", "Which image shows the building in <image>?",
         ["<image>", "<image>", "None of the choices provided"], "A",
         [image_cell((16, 16), "green"), image_cell((10, 10), "yellow"), image_cell((14, 6), "black")]),
        ("3", "Counting", "How many cats?", ["One", "Two"], "A",
         [image_cell((8, 8), "white"), {"bytes": cut, "path": None}, image_cell((8, 8), "gray")]),
        ("4", "Ordering", "Order <image> and <image>.", ["First", "Second"], "B",
         [image_cell((8, 8), "white")] * 3),  # two marks for three images
    ]  # fmt: skip
    columns = dict(zip(("idx", "task", "question", "options", "answer", "image_list"), zip(*rows)))
    data = {**{k: list(v) for k, v in columns.items()}, "image_relation": ["Complementary"] * 4,
            "image_type": ["Photography"] * 4}  # fmt: skip
    return write_repo(root, {"default": {"test": Dataset.from_dict(data, features=MUIR_FEATURES)}})


def test_muirbench_preset_reads_several_images_in_order_with_lettered_options(tmp_path):
    root = muir_repo(tmp_path / "MUIRBENCH")
    with pytest.raises(UserError, match=r"2 of 4 rows .* were skipped"):  # the default allows fewer
        load(root, "data.split=test", "data.preset=MUIRBENCH/MUIRBENCH")
    examples, report = load(root, "data.split=test", "data.preset=MUIRBENCH/MUIRBENCH", "data.max_skip_fraction=0.5")
    assert (report.rows, report.kept) == (4, 2)
    assert report.skipped == skips(corrupt_image=1, placeholder_mismatch=1)
    assert report.samples["corrupt_image"][0].startswith("row 3 (id 3): image 2 of 3: embedded image (30 bytes)")
    assert report.samples["placeholder_mismatch"][0] == (
        "row 4 (id 4): the question holds 2 <image> and 0 <video> for 3 images and 0 video"
    )
    counting, retrieval = examples
    assert (counting.id, counting.question, counting.answers, counting.answer, counting.question_type) == (
        "1",
        "How many mittens are in each image?\nA. Four\nB. Three\nC. None of the choices provided",
        ["B", "Three"],
        "B",  # the SFT target: the letter, as lmms-eval scores it
        "Counting",
    )
    assert [v.size for v in counting.load_visuals()] == [(20, 10), (12, 30)]  # in the list's order
    # the marks stay where the dataset put them, one per image: the question's, then each option's
    assert retrieval.question == (
        "Which image shows the building in <image>?\nA. <image>\nB. <image>\nC. None of the choices provided"
    )
    assert (retrieval.num_images, retrieval.answers, retrieval.answer) == (3, ["A", "A"], "A")
    assert [v.getpixel((0, 0)) for v in retrieval.load_visuals()] == [(0, 128, 0), (255, 255, 0), (0, 0, 0)]
    assert retrieval.fields["image_relation"] == "Complementary" and "image_list" not in retrieval.fields
    streamed, streamed_report = load(root, "data.split=test", "data.preset=MUIRBENCH/MUIRBENCH",
                                     "data.max_skip_fraction=0.5", "data.streaming=true")  # fmt: skip
    assert streamed_report.skipped == report.skipped and [e.question for e in streamed] == [
        e.question for e in examples
    ]
    assert [v.tobytes() for v in streamed[1].load_visuals()] == [v.tobytes() for v in retrieval.load_visuals()]


def test_muirbench_benchmark_prompt_and_metric(tmp_path):
    root = muir_repo(tmp_path / "MUIRBENCH")
    cfg = resolve(load_config(None, [f"data.path={hf(root)}", "data.preset=MUIRBENCH/MUIRBENCH"]))
    assert (cfg.data.benchmark, cfg.reward.components, cfg.train.eval_metric, cfg.eval.max_new_tokens) == (
        "muirbench",
        ["multiple_choice"],
        "multiple_choice",
        16,
    )
    examples, _ = load(root, "data.split=test", "data.preset=MUIRBENCH/MUIRBENCH", "data.max_skip_fraction=0.5")
    counting, retrieval = examples
    # lmms-eval's muir_doc_to_text: f"{question}\n{A. option lines}{post_prompt}"
    assert user_text(counting.question, prompt_template(cfg.data)) == (
        "How many mittens are in each image?\nA. Four\nB. Three\nC. None of the choices provided" + MC
    )
    replies = ["B", "B. Three", "three", "A", "<image>", "A", "(a)", "<image>", "B"]
    answers = [counting.answers] * 4 + [retrieval.answers] * 5
    # the letter (marked or not) or the option's text; an image option has no text: "<image>" is wrong
    assert choice_batch(replies, answers).tolist() == [1, 1, 1, 0, 0, 1, 1, 0, 0]


# ---------------------------------------------------------------------------------------------
# Video-MME: one video per question, named by the row and unzipped from the repository's archives.

VIDEOMME_FEATURES = Features({
    "video_id": Value("string"), "duration": Value("string"), "domain": Value("string"),
    "sub_category": Value("string"), "url": Value("string"), "videoID": Value("string"),
    "question_id": Value("string"), "task_type": Value("string"), "question": Value("string"),
    "options": List(Value("string")), "answer": Value("string"),
})  # fmt: skip
OPTIONS = ["A. Red.", "B. Blue.", "C. Green.", "D. Yellow."]


def write_clip(path, seconds: int, fps: int = 4, size=(32, 24)):
    """A clip of ``seconds`` seconds whose frames are red, then green, then blue, ... one colour a second."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, colours[(i // fps) % 3]))
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def videomme_repo(root):
    rows = {
        "video_id": ["001", "002", "003"], "duration": ["short"] * 3, "domain": ["Knowledge"] * 3,
        "sub_category": ["Astronomy"] * 3, "url": [f"https://www.youtube.com/watch?v=v{i}" for i in "123"],
        "videoID": ["clipA", "clipB", "clipC"], "question_id": ["001-1", "002-1", "003-1"],
        "task_type": ["Attribute Perception", "Counting Problem", "Object Recognition"],
        "question": ["What colour is the screen at the start?", "How many colours are shown?", "What is shown?"],
        "options": [OPTIONS, ["A. One.", "B. Two.", "C. Three.", "D. Four."], OPTIONS], "answer": ["A", "B", "C"],
    }  # fmt: skip
    write_repo(root, {"videomme": {"test": Dataset.from_dict(rows, features=VIDEOMME_FEATURES)}})
    write_clip(root / "data" / "clipA.mp4", seconds=3)  # the archives unzipped in place: data/<videoID>.mp4
    write_clip(root / "data" / "clipB.mkv", seconds=2)  # lmms-eval tries .MP4 and .mkv too; clipC is absent
    return root


def test_videomme_preset_reads_the_video_the_row_names(tmp_path):
    root = videomme_repo(tmp_path / "Video-MME")
    examples, report = load(root, "data.split=test", "data.preset=lmms-lab/Video-MME", "data.max_skip_fraction=0.5")
    assert (report.rows, report.kept, report.skipped) == (3, 2, skips(missing_video=1))
    assert report.samples["missing_video"][0] == f"row 3 (id 003-1): {root / 'data' / 'clipC.mp4'} not found"
    colour, count = examples
    assert (colour.id, colour.question, colour.answers, colour.answer, colour.question_type, colour.num_images) == (
        "001-1",
        "What colour is the screen at the start?\nA. Red.\nB. Blue.\nC. Green.\nD. Yellow.",
        ["A", "Red."],
        "A",
        "Attribute Perception",
        0,
    )
    (video,) = colour.load_visuals()
    assert isinstance(video, Video) and video.fps == 1.0  # data.video_fps: frames at 0 s, 1 s and 2 s
    assert [f.size for f in video.frames] == [(32, 24)] * 3
    # red, green, blue: the channel each sampled frame is brightest in (mpeg4 is lossy)
    assert [max(range(3), key=f.getpixel((16, 12)).__getitem__) for f in video.frames] == [0, 1, 2]
    assert count.video_loader.source == root / "data" / "clipB.mkv"  # found under its other suffix
    assert len(count.load_visuals()[0].frames) == 2
    capped, _ = load(root, "data.split=test", "data.preset=lmms-lab/Video-MME", "data.max_skip_fraction=0.5",
                     "data.video_frames=2", "data.video_fps=4")  # fmt: skip
    assert len(capped[0].load_visuals()[0].frames) == 2  # 12 frames at 4/s, capped at 2 spread over 3 s
    assert capped[0].fields["duration"] == "short" and "video_file" not in capped[0].fields


def test_videomme_videos_come_from_data_image_root(tmp_path):
    root = videomme_repo(tmp_path / "Video-MME")
    elsewhere = tmp_path / "unzipped"
    elsewhere.mkdir()
    (root / "data").rename(elsewhere / "data")
    examples, _ = load(root, "data.split=test", "data.preset=lmms-lab/Video-MME", "data.max_skip_fraction=0.5",
                       f"data.image_root={elsewhere}")  # fmt: skip
    assert [e.video_loader.source for e in examples] == [
        elsewhere / "data" / "clipA.mp4",
        elsewhere / "data" / "clipB.mkv",
    ]
    inside, _ = load(root, "data.split=test", "data.preset=lmms-lab/Video-MME", "data.max_skip_fraction=0.5",
                     f"data.image_root={elsewhere / 'data'}")  # fmt: skip
    assert [e.video_loader.source.name for e in inside] == ["clipA.mp4", "clipB.mkv"]  # the videos' own folder
    data = load_config(None, ["data.preset=lmms-lab/Video-MME", "data.split=test"]).data
    mapped = hub_source(hf(root), data).about["columns"]
    assert (mapped["image"], mapped["video"]) == (  # what data inspect shows
        "(no column 'image': no image, a video a question)",
        "video_file (made from data/<videoID>.mp4 under data.image_root)",
    )
    # the Hub id keeps its videos in zip archives: without data.image_root, one line before any download
    cfg = load_config(None, ["data.path=hf:lmms-lab/Video-MME", "data.split=test"]).data
    with pytest.raises(UserError, match=r"^Video-MME \(lmms-lab/Video-MME\) keeps its videos in the repository's "
                       r"videos_chunked_\*\.zip archives, not in its parquet files; download and unzip them into "
                       r"a folder and set data.image_root to that folder$"):  # fmt: skip
        load_examples(cfg.path, cfg)


def test_videomme_benchmark_prompt_and_metric(tmp_path):
    root = videomme_repo(tmp_path / "Video-MME")
    cfg = resolve(load_config(None, [f"data.path={hf(root)}", "data.preset=lmms-eval/Video-MME"]))
    assert (cfg.data.benchmark, cfg.reward.components, cfg.eval.max_new_tokens) == ("videomme", ["multiple_choice"], 16)
    examples, _ = load(root, "data.split=test", "data.preset=lmms-lab/Video-MME", "data.max_skip_fraction=0.5")
    # lmms-eval's videomme_doc_to_text: option_prompt + "\n" + question + "\n" + options + "\n" + post_prompt
    assert user_text(examples[0].question, prompt_template(cfg.data)) == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "What colour is the screen at the start?\nA. Red.\nB. Blue.\nC. Green.\nD. Yellow.\n" + MC
    )
    replies = ["A", "A. Red.", "red", "B", "Blue."]
    assert choice_batch(replies, [examples[0].answers] * 5).tolist() == [1, 1, 1, 0, 0]


def test_the_presets_record_their_sources():
    muir, videomme = PRESETS["MUIRBENCH/MUIRBENCH"], PRESETS["lmms-lab/Video-MME"]
    assert (muir.benchmark, muir.splits, muir.columns["image"]) == ("muirbench", ("test",), "image_list")
    assert (videomme.benchmark, videomme.aliases, videomme.columns["video"]) == (
        "videomme",
        ("lmms-eval/Video-MME",),
        "video_file",
    )
    assert "lmms_eval/tasks/muirbench" in muir.source and "lmms_eval/tasks/videomme" in videomme.source
