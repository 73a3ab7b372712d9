"""The synthetic multi-image and video sets: answers from the scenes, scenes in the pixels, balance,
determinism, placeholders, and ``vqa-grpo data synth --task``."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vqa_grpo.data import synthetic_multi, synthetic_video
from vqa_grpo.data.synthetic import COLORS
from vqa_grpo.data.synthetic_multi import synthesize_multi
from vqa_grpo.data.synthetic_video import synthesize_video
from vqa_grpo.errors import UserError

ORDINALS = ["first", "second", "third"]
MULTI_KEYS = ["id", "images", "question", "answer", "answers", "question_type", "answer_type", "scenes"]
VIDEO_KEYS = ["id", "video", "question", "answer", "answers", "question_type", "answer_type", "scene"]
VIDEO_SIZE, FRAMES = 64, 6


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = synthesize_multi(tmp_path_factory.mktemp("multi"), n=48, seed=4)
    return path, _read(path)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = synthesize_video(tmp_path_factory.mktemp("video"), n=80, seed=4, image_size=VIDEO_SIZE, frames=FRAMES)
    return path, _read(path)


# ---- answers computed here from a scene description, independently of the generators ----------


def _multi_answer(question: str, scenes: list[list[dict]]) -> str:
    """Answer a multi-image question from its scenes; asserts what the question presumes."""
    q = question.replace("<image> ", "")
    kinds = [[(o["color"], o["shape"]) for o in scene] for scene in scenes]
    choices = ", ".join(f"the {o}" for o in ORDINALS[: len(scenes) - 1]) + f" or the {ORDINALS[len(scenes) - 1]}"
    together = f"in the {['two', 'three'][len(scenes) - 2]} images together"
    if m := re.fullmatch(rf"Which image has (more|the most) (\w+) objects, {choices}\?", q):
        assert m[1] == ("more" if len(scenes) == 2 else "the most")
        counts = [sum(c == m[2] for c, _ in k) for k in kinds]
        assert counts.count(max(counts)) == 1, "no tie"
        return ORDINALS[counts.index(max(counts))]
    if m := re.fullmatch(r"Is the shape in (both|all three) images the same\?", q):
        assert m[1] == ("both" if len(scenes) == 2 else "all three") and all(len(k) == 1 for k in kinds)
        return "yes" if len({k[0][1] for k in kinds}) == 1 else "no"
    if m := re.fullmatch(rf"How many (\w+) objects are there {together}\?", q):
        return str(sum(c == m[1] for k in kinds for c, _ in k))
    if m := re.fullmatch(rf"How many (\w+)s are there {together}\?", q):
        return str(sum(s == m[1] for k in kinds for _, s in k))
    if m := re.fullmatch(rf"In which image is there a (\w+) (\w+), {choices}\?", q):
        (where,) = [i for i, k in enumerate(kinds) if (m[1], m[2]) in k]
        assert kinds[where].count((m[1], m[2])) == 1
        return ORDINALS[where]
    raise AssertionError(f"unknown question: {question}")


def _in_view(box: list[int], size: int) -> bool:
    return 0 <= box[0] and box[2] <= size and 0 <= box[1] and box[3] <= size


def _out_of_view(box: list[int], size: int) -> bool:
    return box[2] <= 0 or box[0] >= size


def _motion(boxes: list[list[int]], size: int) -> str:
    first, last = boxes[0], boxes[-1]
    if _out_of_view(first, size) and _in_view(last, size):
        return "enter"
    if _in_view(first, size) and _out_of_view(last, size):
        return "leave"
    assert all(_in_view(b, size) for b in boxes)
    return "stay"


def _video_answer(question: str, scene: list[dict], size: int) -> str:
    """Answer a video question from the objects' boxes in each frame."""
    moves = [((o["color"], o["shape"]), _motion(o["boxes"], size), o["boxes"]) for o in scene]
    if m := re.fullmatch(r"Does a (\w+) (\w+) enter the scene\?", question):
        return "yes" if any(k == (m[1], m[2]) and motion == "enter" for k, motion, _ in moves) else "no"
    if question == "Which object leaves the scene?":
        (kind,) = [k for k, motion, _ in moves if motion == "leave"]
        return " ".join(kind)
    if question == "How many objects are there at the end?":
        return str(sum(_in_view(boxes[-1], size) for _, _, boxes in moves))
    if m := re.fullmatch(r"Does the (\w+) (\w+) move left or right\?", question):
        (boxes,) = [b for k, _, b in moves if k == (m[1], m[2])]
        shift = boxes[-1][0] - boxes[0][0]
        assert abs(shift) >= boxes[0][2] - boxes[0][0], "moves at least its width"
        return "right" if shift > 0 else "left"
    raise AssertionError(f"unknown question: {question}")


def _obj(color: str, shape: str, *boxes: list[int]) -> dict:
    return {"color": color, "shape": shape, "boxes": list(boxes), "box": boxes[0]}


@pytest.mark.parametrize(
    "question, scenes, answer",
    [  # hand-made scenes: the checker above must read them as a person does
        (
            "<image> <image> Which image has more red objects, the first or the second?",
            [
                [_obj("red", "circle", []), _obj("blue", "circle", [])],
                [_obj("red", "square", []), _obj("red", "circle", [])],
            ],
            "second",
        ),
        ("Is the shape in both images the same?", [[_obj("red", "circle", [])], [_obj("blue", "circle", [])]], "yes"),
        (
            "Is the shape in all three images the same?",
            [[_obj("red", "circle", [])], [_obj("red", "circle", [])], [_obj("red", "square", [])]],
            "no",
        ),
        (
            "How many circles are there in the two images together?",
            [[_obj("red", "circle", []), _obj("red", "square", [])], [_obj("blue", "circle", [])]],
            "2",
        ),
        (
            "In which image is there a green square, the first, the second or the third?",
            [[_obj("green", "circle", [])], [_obj("red", "square", [])], [_obj("green", "square", [])]],
            "third",
        ),
    ],
)
def test_the_multi_image_checker_on_hand_made_scenes(question, scenes, answer):
    assert _multi_answer(question, scenes) == answer


@pytest.mark.parametrize(
    "question, answer",
    [  # one scene, 64 px: a red circle comes in from the left, a blue square leaves right, a green triangle stays
        ("Does a red circle enter the scene?", "yes"),
        ("Does a blue square enter the scene?", "no"),
        ("Which object leaves the scene?", "blue square"),
        ("How many objects are there at the end?", "2"),
        ("Does the red circle move left or right?", "right"),
        ("Does the green triangle move left or right?", "left"),
    ],
)
def test_the_video_checker_on_a_hand_made_clip(question, answer):
    scene = [
        _obj("red", "circle", [-20, 2, -10, 12], [5, 2, 15, 12], [30, 2, 40, 12]),
        _obj("blue", "square", [40, 20, 50, 30], [52, 20, 62, 30], [64, 20, 74, 30]),
        _obj("green", "triangle", [40, 40, 50, 50], [35, 40, 45, 50], [30, 40, 40, 50]),
    ]
    assert _video_answer(question, scene, 64) == answer


# ---- the multi-image set ------------------------------------------------------------------------


def test_multi_rows_answers_follow_from_the_scenes_and_images_exist(multi):
    path, rows = multi
    assert [r["id"] for r in rows] == [f"{i:06d}" for i in range(48)]
    for row in rows:
        assert list(row) == MULTI_KEYS and row["answers"] == [row["answer"]]
        assert row["images"] == [f"images/{row['id']}/{k}.png" for k in range(len(row["scenes"]))]
        assert _multi_answer(row["question"], row["scenes"]) == row["answer"], row["id"]
        assert all(1 <= len(s) <= synthetic_multi.MAX_OBJECTS_PER_IMAGE for s in row["scenes"])
    assert all((path.parent / p).is_file() for r in rows for p in r["images"])


def test_multi_kinds_answers_image_counts_and_placeholders_are_balanced(multi):
    _, rows = multi
    kind = {"which": "more", "is the": "same_shape", "how many": "count", "none of the above": "which"}
    by_kind = Counter(kind[r["question_type"]] for r in rows)
    assert by_kind == {"more": 12, "same_shape": 12, "count": 12, "which": 12}
    assert {r["answer_type"] for r in rows if kind[r["question_type"]] == "count"} == {"number"}
    assert {r["answer_type"] for r in rows if kind[r["question_type"]] == "same_shape"} == {"yes/no"}
    assert Counter(len(r["images"]) for r in rows) == {2: 36, 3: 12}  # 12 per kind: 9 and 3
    answers = {"more": ORDINALS, "same_shape": ["yes", "no"], "count": [str(k) for k in range(7)], "which": ORDINALS}
    for name, n_images in [(k, m) for k in answers for m in (2, 3)]:  # balanced within each, up to one
        group = Counter(r["answer"] for r in rows if kind[r["question_type"]] == name and len(r["images"]) == n_images)
        possible = answers[name][:n_images] if answers[name] is ORDINALS else answers[name]
        assert set(group) <= set(possible), (name, n_images)
        assert max(group.values()) - min(group[a] for a in possible) <= 1, (name, n_images, group)
    for r in rows:
        placeholders = r["question"].count("<image>")
        assert placeholders in (0, len(r["images"]))
        assert r["question"].startswith("<image> " * placeholders)
    assert sum("<image>" in r["question"] for r in rows) == 24


def test_multi_pixels_show_the_scenes(multi):
    # Each colour's connected regions in the image are that colour's objects in the scene.
    path, rows = multi
    for row in rows[:15]:
        for image_path, scene in zip(row["images"], row["scenes"]):
            with Image.open(path.parent / image_path) as image:
                assert image.size == (112, 112) and image.mode == "RGB"
                pixels = np.asarray(image)
            for color, rgb in COLORS.items():
                regions = ndimage.label((pixels == rgb).all(axis=-1))[1]
                assert regions == sum(o["color"] == color for o in scene), (row["id"], image_path, color)


def test_multi_same_seed_same_bytes_another_differs(tmp_path):
    first = _tree_bytes(synthesize_multi(tmp_path / "a", n=8, seed=2).parent)
    assert _tree_bytes(synthesize_multi(tmp_path / "b", n=8, seed=2).parent) == first
    other = _tree_bytes(synthesize_multi(tmp_path / "c", n=8, seed=3).parent)
    assert first["data.jsonl"] != other["data.jsonl"]
    assert "data.jsonl.tmp" not in first and sum(k.endswith(".png") for k in first) >= 16


# ---- the video set ------------------------------------------------------------------------------


def test_video_rows_answers_follow_from_the_tracks_and_frames_exist(video):
    path, rows = video
    for row in rows:
        assert list(row) == VIDEO_KEYS and row["answers"] == [row["answer"]]
        assert row["video"] == [f"images/{row['id']}/{t:02d}.png" for t in range(FRAMES)]
        assert _video_answer(row["question"], row["scene"], VIDEO_SIZE) == row["answer"], row["id"]
        assert 1 <= len(row["scene"]) <= synthetic_video.MAX_OBJECTS
        for obj in row["scene"]:
            assert obj["motion"] == _motion(obj["boxes"], VIDEO_SIZE) and len(obj["boxes"]) == FRAMES
        for t in range(FRAMES):  # never closer than the gap in any frame
            boxes = [o["boxes"][t] for o in row["scene"]]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (row["id"], t)
    assert all((path.parent / f).is_file() for r in rows for f in r["video"])


def test_video_kinds_and_answers_are_balanced(video):
    _, rows = video
    assert Counter(r["answer_type"] for r in rows) == {"yes/no": 20, "number": 20, "other": 40}
    enter = Counter(r["answer"] for r in rows if r["question"].startswith("Does a "))
    assert enter == {"yes": 10, "no": 10}
    direction = Counter(r["answer"] for r in rows if r["question"].endswith("move left or right?"))
    assert direction == {"left": 10, "right": 10}
    assert Counter(r["answer"] for r in rows if r["answer_type"] == "number") == {str(k): 5 for k in range(4)}


def test_video_first_and_last_frames_show_what_is_in_view(video):
    # In the first and last frames every object is wholly in or out of view: each colour's connected
    # regions are its objects in view there.
    path, rows = video
    for row in rows[:20]:
        for t in (0, FRAMES - 1):
            with Image.open(path.parent / row["video"][t]) as image:
                assert image.size == (VIDEO_SIZE, VIDEO_SIZE)
                pixels = np.asarray(image)
            for color, rgb in COLORS.items():
                regions = ndimage.label((pixels == rgb).all(axis=-1))[1]
                shown = sum(o["color"] == color and _in_view(o["boxes"][t], VIDEO_SIZE) for o in row["scene"])
                assert regions == shown, (row["id"], t, color)


def test_video_same_seed_same_bytes_and_bad_frames_raise(tmp_path):
    first = _tree_bytes(synthesize_video(tmp_path / "a", n=4, seed=2, image_size=48, frames=4).parent)
    assert _tree_bytes(synthesize_video(tmp_path / "b", n=4, seed=2, image_size=48, frames=4).parent) == first
    assert len(first) == 1 + 4 * 4
    with pytest.raises(UserError, match="frames must be at least 4"):
        synthesize_video(tmp_path / "c", n=2, frames=3)
    assert not (tmp_path / "c").exists()


def test_video_as_mp4_decodes_to_the_drawn_frames(tmp_path):
    pytest.importorskip("av")
    from vqa_grpo.data.video import VideoLoader

    path = synthesize_video(tmp_path / "a", n=4, seed=2, image_size=48, frames=5, video_format="mp4")
    again = synthesize_video(tmp_path / "b", n=4, seed=2, image_size=48, frames=5, video_format="mp4")
    assert _tree_bytes(path.parent) == _tree_bytes(again.parent) and len(_tree_bytes(path.parent)) == 1 + 4
    for row in _read(path):
        assert row["video"] == f"videos/{row['id']}.mp4"
        clip = VideoLoader(path.parent / row["video"], max_frames=8, fps=1.0)()
        assert len(clip.frames) == 5 and clip.fps == 1.0 and clip.frames[0].size == (48, 48)
        for t in (0, 4):  # each object in view shows its colour at its centre (H.264: within 4 levels)
            pixels = np.asarray(clip.frames[t]).astype(int)
            for obj in row["scene"]:
                x0, y0, x1, y1 = obj["boxes"][t]
                if _in_view(obj["boxes"][t], 48):
                    assert np.abs(pixels[(y0 + y1) // 2, (x0 + x1) // 2] - COLORS[obj["color"]]).max() <= 4


def test_load_vqa_reads_every_row_with_its_images_and_its_clip(multi, video):
    from vqa_grpo.config import DataConfig
    from vqa_grpo.data.loader import load_vqa
    from vqa_grpo.data.types import Video

    data = load_vqa(DataConfig(path=str(multi[0]), eval_fraction=0.25))
    examples = [*data.train, *data.eval]
    assert data.report.kept == 48 and not any(data.report.skipped.values()) and data.report.max_images == 3
    assert Counter(e.num_images for e in examples) == {2: 36, 3: 12}
    row = multi[1][0]
    (first,) = [e for e in examples if e.id == row["id"]]
    assert first.question == row["question"] and first.answers == row["answers"]
    for image, image_path in zip(first.load_visuals(), row["images"], strict=True):
        assert np.array_equal(np.asarray(image), _pixels(multi[0].parent / image_path))

    data = load_vqa(DataConfig(path=str(video[0]), eval_fraction=0.25, video_frames=4))
    examples = [*data.train, *data.eval]
    assert data.report.kept == 80 and not any(data.report.skipped.values()) and data.report.videos == 80
    row = video[1][0]
    (first,) = [e for e in examples if e.id == row["id"]]
    (clip,) = first.load_visuals()
    assert isinstance(clip, Video) and len(clip.frames) == 4 and first.num_images == 0
    drawn = [_pixels(video[0].parent / f) for f in row["video"]]
    picks = [next(t for t, d in enumerate(drawn) if np.array_equal(d, np.asarray(f))) for f in clip.frames]
    assert picks == sorted(picks) and len(set(picks)) == 4  # 4 of the 6 frames, in time order


def test_every_word_is_in_the_vocabularies(multi, video):
    for module, (_, rows) in ((synthetic_multi, multi), (synthetic_video, video)):
        seen = set()
        for row in rows:
            for text in (row["question"].replace("<image>", ""), row["answer"]):
                seen |= {t.lower() for t in re.findall(r"\w+|[^\w\s]", text)}
        assert seen <= set(module.VOCABULARY), seen - set(module.VOCABULARY)


# ---- the command --------------------------------------------------------------------------------


def test_data_synth_task_writes_rows_with_images_or_video(tmp_path, capsys):
    from vqa_grpo.cli import main

    assert main(["data", "synth", "--task", "multi-image", "--out", str(tmp_path / "m"), "--n", "4"]) == 0
    assert capsys.readouterr().out == f"wrote 4 questions to {tmp_path / 'm' / 'data.jsonl'}\n"
    for row in _read(tmp_path / "m" / "data.jsonl"):
        assert len(row["images"]) in (2, 3) and all((tmp_path / "m" / p).is_file() for p in row["images"])
    args = ["data", "synth", "--task", "video", "--out", str(tmp_path / "v"), "--n", "3", "--frames", "5"]
    assert main([*args, "--image-size", "48"]) == 0
    assert capsys.readouterr().out == f"wrote 3 questions to {tmp_path / 'v' / 'data.jsonl'}\n"
    for row in _read(tmp_path / "v" / "data.jsonl"):
        assert len(row["video"]) == 5 and all((tmp_path / "v" / p).is_file() for p in row["video"])
        assert "image" not in row and "images" not in row


@pytest.mark.parametrize(
    "args, error",
    [
        (["--task", "video", "--ood"], "error: --task video takes no --ood or --unanswerable"),
        (["--task", "multi-image", "--unanswerable", "0.1"], "error: --task multi-image takes no --ood"),
        (["--frames", "6"], "error: --frames and --video-format are for --task video, not --task single"),
        (["--task", "video", "--video-format", "mp4", "--image-size", "65"], "error: image_size must be even for MP4"),
        (["--task", "video", "--frames", "3"], "error: frames must be at least 4 per clip (--frames), got 3"),
        (["--n", "0"], "error: n must be a positive number of examples (--n), got 0"),
        (["--task", "multi-image", "--image-size", "16"], "error: image_size must be at least 32 px (--image-size)"),
        (["--unanswerable", "1.5"], "error: unanswerable must be a share in [0, 1] (--unanswerable), e.g. 0.1; got"),
    ],
)
def test_data_synth_task_refuses_options_of_other_tasks(tmp_path, capsys, args, error):
    from vqa_grpo.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(error) and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_data_synth_bad_task_is_an_argparse_error(tmp_path, capsys):
    from vqa_grpo.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--out", str(tmp_path / "o"), "--task", "multi"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("vqa-grpo data synth: error: argument --task: invalid choice: 'multi'")
    assert all(name in last for name in ("single", "multi-image", "video"))
    assert not (tmp_path / "o").exists()
