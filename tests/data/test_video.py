"""Videos: a file sampled by data.video_fps and data.video_frames, a list of frames, the checks
at load, the index, and ``data inspect``'s lines.

The clip is a real mp4 written with PyAV: 8 frames of 32x32 at 4 frames/s (2 s), frame i grey
at level 30*i, so a sampled frame's level tells which frame it is (mpeg4 is lossy: rounded).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vqa_grpo.cli import main
from vqa_grpo.config import ConfigError, DataConfig
from vqa_grpo.config_load import load_config
from vqa_grpo.data.loader import SKIP_REASONS, load_examples
from vqa_grpo.data.table import ExampleTable
from vqa_grpo.data.types import BadExample, Video
from vqa_grpo.data.video import VideoLoader, import_av, sample_indices, sample_times, takes_every_frame
from vqa_grpo.errors import UserError


def write_clip(path: Path, frames: int = 8, rate: int = 4, step: int = 30, codec: str = "mpeg4") -> Path:
    """``frames`` frames of 32x32 at ``rate`` frames/s, frame i grey at level ``step * i``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), step * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


def which(video: Video, step: int = 30) -> list[int]:
    """The frame each sampled frame is, by its grey level."""
    return [round(f.getpixel((f.width // 2, f.height // 2))[0] / step) for f in video.frames]


def test_sample_times():
    assert sample_times(2.0, 1.0, 8) == ([0.0, 1.0], 1.0)  # 0 s and 1 s: inside the 2 s clip
    assert sample_times(2.5, 1.0, 8) == ([0.0, 1.0, 2.0], 1.0)
    assert sample_times(0.2, 1.0, 8) == ([0.0], 1.0)  # at least one frame
    # 4/s over 2 s is 8 frames, more than 5: 5 times from 0 to 2 s, both ends, 4 gaps in 2 s
    assert sample_times(2.0, 4.0, 5) == ([0.0, 0.5, 1.0, 1.5, 2.0], 2.0)
    assert sample_times(4.0, 4.0, 1) == ([0.0], 0.25)
    # 16 frames, 4 of them: round(linspace(0, 15, 4)) = round(0, 5, 10, 15); 10 frames: 0, 4.5 -> 5, 9
    assert sample_indices(16, 2.0, 4) == ([0, 5, 10, 15], 2.0 / 5)
    assert sample_indices(10, 1.0, 3) == ([0, 5, 9], 1 / 4.5)
    assert sample_indices(3, 1.0, 8) == ([0, 1, 2], 1.0)
    # 2 s at 8/s asks for 16 times; a clip of 8 frames (at most 16 taken) gives each frame once
    assert (takes_every_frame(2.0, 8.0, 16, 8), takes_every_frame(2.0, 4.0, 16, 8)) == (True, False)
    assert (takes_every_frame(2.0, 8.0, 5, 8), takes_every_frame(2.0, 8.0, 16, 0)) == (False, False)


def test_a_rate_above_the_clips_own_takes_each_frame_once(tmp_path):
    # a Matroska file's header has no frame count: 2 s x its mean rate 4/s = 8 frames
    video = VideoLoader(write_clip(tmp_path / "clip.mkv"), max_frames=32, fps=30.0)()
    assert (which(video), video.fps) == ([0, 1, 2, 3, 4, 5, 6, 7], 4.0)
    assert video.times == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # each frame's own time


def test_a_file_at_the_rate_and_evenly_spread_when_over_the_count(clip):
    video = VideoLoader(clip, max_frames=8, fps=1.0)()
    assert (which(video), video.fps, [f.size for f in video.frames]) == ([0, 4], 1.0, [(32, 32)] * 2)
    assert video.times == (0.0, 1.0)  # the times sampled
    assert all(f.mode == "RGB" for f in video.frames)
    # 4/s gives 8 > 3: times 0, 1, 2 s, on screen then frames 0, 4 (1 s) and the last, 7 (1.75 s)
    video = VideoLoader(clip, max_frames=3, fps=4.0)()
    assert (which(video), video.fps, video.times) == ([0, 4, 7], 1.0, (0.0, 1.0, 2.0))
    # 8/s, above the clip's 4/s, asks for 16 times from 8 frames: each frame once, at the clip's 4/s
    video = VideoLoader(clip, max_frames=16, fps=8.0)()
    assert (which(video), video.fps) == ([0, 1, 2, 3, 4, 5, 6, 7], 4.0)
    assert video.times == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    # 8/s with at most 5: 5 times from 0 to 2 s (0.5 s apart), frames 0, 2, 4, 6 and the last, 7
    video = VideoLoader(clip, max_frames=5, fps=8.0)()
    assert (which(video), video.fps, video.times) == ([0, 2, 4, 6, 7], 2.0, (0.0, 0.5, 1.0, 1.5, 2.0))
    assert VideoLoader(clip, 1, 1.0, max_pixels=256)().frames[0].size == (16, 16)  # data.max_image_pixels


def test_a_long_clip_seeks_to_far_times(tmp_path):
    # 40 frames at 4/s (10 s), a key frame every 4; frame i is red 40*(i%6), green 40*(i//6)
    with av.open(str(tmp_path / "long.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 4
        for i in range(40):
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[..., 0], pixels[..., 1] = 40 * (i % 6), 40 * (i // 6)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())

    def index(video: Video) -> list[int]:
        return [round(r / 40) + 6 * round(g / 40) for r, g, _ in (f.getpixel((16, 16)) for f in video.frames)]

    # 1/s gives 10 > 3: at 0, 5 and 10 s, frames 0, 20 and the last, 39; each time more than
    # SEEK_GAP (3 s) past the last frame decoded, so each is reached by a seek
    video = VideoLoader(tmp_path / "long.mp4", max_frames=3, fps=1.0)()
    assert (index(video), round(video.fps, 4), video.times) == ([0, 20, 39], 0.2, (0.0, 5.0, 10.0))
    assert index(VideoLoader(tmp_path / "long.mp4", max_frames=10, fps=1.0)()) == list(range(0, 40, 4))


def test_a_list_of_frames(tmp_path):
    paths = []
    for i in range(5):
        Image.new("RGB", (6, 4), (50 * i, 0, 0)).save(tmp_path / f"f{i}.png")
        paths.append(tmp_path / f"f{i}.png")
    video = VideoLoader(tuple(paths), max_frames=8, fps=1.0)()
    assert (which(video, 50), video.fps, video.times) == ([0, 1, 2, 3, 4], 1.0, (0.0, 1.0, 2.0, 3.0, 4.0))
    # 5 frames at 1/s; 2 of them: the first and the last, 4 s apart; 3: frames 0, 2 and 4
    video = VideoLoader(tuple(paths), max_frames=2, fps=1.0)()
    assert (which(video, 50), video.fps, video.times) == ([0, 4], 0.25, (0.0, 4.0))
    video = VideoLoader(tuple(paths), max_frames=3, fps=1.0)()
    assert (which(video, 50), video.fps, video.times) == ([0, 2, 4], 0.5, (0.0, 2.0, 4.0))
    # 4 of them: round(0, 4/3, 8/3, 4) = frames 0, 1, 3, 4, not evenly spaced: each at its own second
    video = VideoLoader(tuple(paths), max_frames=4, fps=2.0)()
    assert (which(video, 50), video.fps, video.times) == ([0, 1, 3, 4], 1.5, (0.0, 0.5, 1.5, 2.0))
    assert Video(video.frames, 1.5).frame_times() == (0.0, 2 / 3, 4 / 3, 2.0)  # without times: k / fps


def test_a_video_gives_one_time_per_frame():
    frames = [Image.new("RGB", (4, 4))] * 3
    with pytest.raises(UserError, match=r"^a Video's times must give one time per frame: 2 for 3 frames$"):
        Video(frames, 1.0, (0.0, 1.0))
    assert Video(frames, 1.0, (0.0, 1.0, 3.0)).frame_times() == (0.0, 1.0, 3.0)


def test_a_perturbed_clip_keeps_its_times():
    """Augmentation and the robustness evaluation perturb each frame (grpo/augment.py): the rate
    and each frame's time stay as sampled."""
    from vqa_grpo.data.perturb import perturb
    from vqa_grpo.grpo.augment import perturb_visuals

    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(3)]
    out = perturb_visuals(Video(frames, 0.75, (0.0, 1.0, 3.0)), "gaussian_noise", 3, seed=7)
    assert (out.fps, out.times) == (0.75, (0.0, 1.0, 3.0))
    assert [f.tobytes() for f in out.frames] == [perturb(f, "gaussian_noise", 3, 7).tobytes() for f in frames]


def test_a_file_cut_short_repeats_its_last_frame_at_that_frames_time(tmp_path):
    """A file holding fewer frames than its header says: a time within the frames it holds keeps
    the time asked; one more than a frame's duration (1/4 s) past the last frame decoded shows
    that frame at its own time, so a prompt never dates a frame later than it is."""
    # 80 frames at 4/s (20 s), frame i grey 3*i, lossless (ffv1: yuv rounding moves a level by at
    # most 1, so round(level / 3) is the frame); its first half of bytes holds frames 0 to 37
    # (0 to 9.25 s) under the header's 20 s
    full = write_clip(tmp_path / "full.mkv", frames=80, step=3, codec="ffv1").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(full[: len(full) // 2])
    video = VideoLoader(tmp_path / "cut.mkv", max_frames=10, fps=0.5)()  # every 2 s, 0 to 18 s
    assert (which(video, 3), video.fps) == ([0, 8, 16, 24, 32, 37, 37, 37, 37, 37], 0.5)
    assert video.times == (0.0, 2.0, 4.0, 6.0, 8.0, 9.25, 9.25, 9.25, 9.25, 9.25)
    # every 0.5 s: 9.5 s is within frame 37's quarter second (on screen 9.25 to 9.5 s), 10 s past
    # it; its copies keep 9.5 s rather than go back to 9.25 s
    video = VideoLoader(tmp_path / "cut.mkv", max_frames=40, fps=2.0)()
    assert (which(video, 3)[17:], video.times[17:]) == ([34, 36, 37] + [37] * 20, (8.5, 9.0, 9.5) + (9.5,) * 20)


def write_rows(folder: Path, clip: Path) -> Path:
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 20)
    for i in range(3):
        Image.new("RGB", (6, 4), (50 * i, 0, 0)).save(folder / f"f{i}.png")
    rows = [
        dict(id="file", video="clip.mp4", question="<video> What happens?", answer="it brightens"),
        dict(id="frames", video=["f0.png", "f1.png", "f2.png"], question="What moves?", answer="nothing"),
        dict(id="both", image="f1.png", video="clip.mp4", question="Is <image> in <video>?", answer="yes"),
        dict(id="plain", image="f0.png", question="What color?", answer="black"),
        dict(id="broken", video="broken.mp4", question="What happens?", answer="x"),
        dict(id="gone", video="nowhere.mp4", question="What happens?", answer="x"),
        dict(id="badframe", video=["f0.png", "nope.png", "f2.png"], question="What moves?", answer="x"),
        dict(id="unmarked", image="f0.png", question="What is in <video>?", answer="x"),
    ]
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loading_checks_each_video_and_names_the_bad_frame(tmp_path, clip):
    path = write_rows(tmp_path, clip)
    examples, report = load_examples(str(path), DataConfig(max_skip_fraction=0.5, video_frames=2, video_fps=4.0))
    assert [e.id for e in examples] == ["file", "frames", "both", "plain"]
    expected = {"missing_video": 1, "corrupt_video": 1, "missing_image": 1, "placeholder_mismatch": 1}
    assert report.skipped == {**dict.fromkeys(SKIP_REASONS, 0), **expected}
    assert (report.max_images, report.videos) == (1, 3)
    assert report.samples["missing_video"] == [f"row 6 (id gone): {tmp_path}/nowhere.mp4 not found"]
    assert report.samples["corrupt_video"][0].startswith(f"row 5 (id broken): {tmp_path}/broken.mp4: ")
    assert report.samples["missing_image"] == [
        f"row 7 (id badframe): video frame 2 of 3: {tmp_path}/nope.png not found"
    ]
    assert report.samples["placeholder_mismatch"] == [
        "row 8 (id unmarked): the question holds 0 <image> and 1 <video> for 1 image and 0 video"
    ]
    file, frames, both, plain = examples
    video = file.load_visuals()[0]  # 4/s over 2 s is 8 > 2: at 0 s and 2 s, the first and last frames
    assert (which(video), video.fps) == ([0, 7], 0.5)
    # 3 frames at 4/s, 2 of them: the first and the last, 2 frames (0.5 s) apart
    (video,) = frames.load_visuals()
    assert (which(video, 50), video.fps) == ([0, 2], 2.0)
    image, clip_video = both.load_visuals()
    assert (image.size, which(clip_video)) == ((6, 4), [0, 7])
    assert plain.video_loader is None and file.image_loader is None and file.num_images == 0
    assert file.fields == {} and frames.fields == {}  # the video column is not a field for reward functions


def test_the_index_keeps_paths_and_samples_by_the_settings_of_the_load(tmp_path, clip):
    path = write_rows(tmp_path, clip)
    first, _ = load_examples(str(path), DataConfig(max_skip_fraction=0.5))
    again, report = load_examples(str(path), DataConfig(max_skip_fraction=0.5, video_frames=1, video_fps=2.0))
    assert isinstance(again, ExampleTable) and not again.inline and report.videos == 3
    assert again[0].video_loader == VideoLoader(tmp_path / "clip.mp4", 1, 2.0, 1_000_000)
    assert (
        again[1].video_loader.source == first[1].video_loader.source == tuple(tmp_path / f"f{i}.png" for i in range(3))
    )
    assert len(list((tmp_path / ".vqa_grpo_cache").glob("*.arrow"))) == 1  # the same index: no new key


def test_a_decode_failure_later_is_a_bad_example(tmp_path, clip):
    path = write_rows(tmp_path, clip)
    examples, _ = load_examples(str(path), DataConfig(max_skip_fraction=0.5, cache_dir="none"))
    (tmp_path / "clip.mp4").write_bytes(b"overwritten")
    with pytest.raises(BadExample, match=r"^example file: video failed to load: InvalidDataError"):
        examples[0].load_visuals()


def test_video_bytes_in_parquet_stay_in_memory(tmp_path, clip):
    rows = [dict(id="v", video={"bytes": clip.read_bytes(), "path": None}, question="What?", answer="x")]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    (ex,), report = load_examples(str(tmp_path / "d.parquet"), DataConfig())
    assert report.videos == 1 and ex.video_loader.describe() == "video stored in the data file"
    assert which(ex.load_visuals()[0]) == [0, 4]


def test_without_pyav_one_line_names_the_extra(monkeypatch, tmp_path, clip):
    monkeypatch.setitem(sys.modules, "av", None)  # as if not installed: the import fails
    with pytest.raises(UserError, match=r"^reading a video file needs PyAV; pip install 'vqa-grpo\[video\]'$"):
        import_av()
    with pytest.raises(UserError, match=r"vqa-grpo\[video\]"):
        load_examples(str(write_rows(tmp_path, clip)), DataConfig(max_skip_fraction=0.5))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.video_frames=0", "data.video_frames=0: must be >= 1 (frames sampled from a video)"),
        ("data.video_fps=0", "data.video_fps=0.0: must be > 0 (frames per second sampled from a video)"),
        ("data.video_fps=-2", "data.video_fps=-2.0: must be > 0 (frames per second sampled from a video)"),
        ("data.video_frames=2.5", "data.video_frames must be an integer, got 2.5"),
    ],
)
def test_config_keys_are_checked(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message
    cfg = load_config(None, ["data.video_frames=4", "data.video_fps=2", "data.columns.video=clip"]).data
    assert (cfg.video_frames, cfg.video_fps, cfg.columns.video) == (4, 2.0, "clip")


def test_inspect_shows_each_examples_images_and_video(tmp_path, clip, capsys):
    path = write_rows(tmp_path, clip)
    assert main(["data", "inspect", str(path), "data.max_skip_fraction=0.5", "data.video_frames=2"]) == 0
    out = capsys.readouterr().out
    video = f"      video: {tmp_path}/clip.mp4 (2 frames of 32x32 sampled at 1/s)"
    assert f"  [file] <video> What happens?\n{' ' * 6}answer: it brightens   answers: it brightens\n" in out
    assert f"      answer type: other   question type: what\n{video}\n" in out  # not the placeholder's type
    assert "      video: a list of 3 frame images (2 frames of 6x4 sampled at 0.5/s)" in out
    assert "images per question: at most 1; questions with a video: 3" in out


def test_a_datasets_video_feature_is_read_undecoded(tmp_path, clip):
    import datasets

    rows = {"video": [{"bytes": clip.read_bytes(), "path": None}], "question": ["What?"], "answer": ["x"]}
    ds = datasets.Dataset.from_dict(rows).cast_column("video", datasets.Video())  # decoding on, as the Hub has it
    ds.save_to_disk(str(tmp_path / "ds"))
    (ex,), report = load_examples(str(tmp_path / "ds"), DataConfig())
    assert report.videos == 1 and which(ex.load_visuals()[0]) == [0, 4]


def test_a_failed_mp4_encoding_leaves_no_file(tmp_path):
    from vqa_grpo.data.synthetic_video import write_mp4

    with pytest.raises(av.FFmpegError):  # yuv420p: libx264 refuses odd sides
        write_mp4(tmp_path / "x.mp4", [Image.new("RGB", (33, 33))] * 2)
    assert list(tmp_path.iterdir()) == []


def test_inspect_names_a_frame_list_and_one_frame(tmp_path):
    from vqa_grpo.data.inspect import _frames

    Image.new("RGB", (6, 4)).save(tmp_path / "f.png")
    loader = VideoLoader((tmp_path / "f.png",), max_frames=8, fps=1.0)
    assert (loader.describe(), _frames(loader())) == ("a list of 1 frame image", "1 frame of 6x4 sampled at 1/s")
