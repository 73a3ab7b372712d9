"""The image perturbations (data/perturb.py): hand-computed pixels, sizes, determinism, parsing."""

import numpy as np
import pytest
from PIL import Image

from vqa_grpo.data.perturb import PERTURBATIONS, parse_perturbations, perturb, perturb_seed
from vqa_grpo.errors import UserError


def gradient(w: int = 32, h: int = 24) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 8) % 256, (y * 10) % 256, ((x + y) * 4) % 256], axis=2).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


FOUR = Image.fromarray(np.array([[[0, 0, 0], [100, 50, 0]], [[200, 100, 50], [255, 255, 255]]], np.uint8), "RGB")


def pixels(img: Image.Image) -> list:
    return np.asarray(img).tolist()


def test_every_perturbation_keeps_size_and_rgb_and_is_deterministic():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB")
    for name in PERTURBATIONS:
        for severity in (1, 5):
            a, b = perturb(img, name, severity, seed=7), perturb(img, name, severity, seed=7)
            assert (a.mode, a.size) == ("RGB", (32, 24)), name
            assert a.tobytes() == b.tobytes(), name
            assert a.tobytes() != img.tobytes(), (name, severity)
    grey = gradient().convert("L")  # not RGB in: RGB out
    assert perturb(grey, "contrast", 1, 0).mode == "RGB"


def test_contrast_by_hand():
    # Red channel 0, 100, 200, 255: mean 138.75; severity 1 keeps 0.4 of each distance to it:
    # 0 -> 138.75 - 0.4 * 138.75 = 83.25 -> 83; 100 -> 123.25 -> 123; 200 -> 163.25; 255 -> 185.25.
    # Green 0, 50, 100, 255 (mean 101.25): 60.75 -> 61, 80.75 -> 81, 100.75 -> 101, 162.75 -> 163.
    assert pixels(perturb(FOUR, "contrast", 1, 0)) == [
        [[83, 61, 46], [123, 81, 46]],
        [[163, 101, 66], [185, 163, 148]],
    ]


def test_brightness_raises_hsv_value_by_hand():
    # Severity 2 adds 0.2 (51 grey levels) to the HSV value. (150, 60, 30): v = 150 -> 201, so each
    # channel times 201/150 = 1.34: 201, 80.4 -> 80, 40.2 -> 40. Black has no hue: grey 51.
    # White is at v = 255 already and stays; (250, 10, 0) reaches 255: times 255/250 -> 255, 10.2 -> 10.
    img = Image.fromarray(np.array([[[150, 60, 30], [0, 0, 0], [255, 255, 255], [250, 10, 0]]], np.uint8), "RGB")
    assert pixels(perturb(img, "brightness", 2, 0)) == [[[201, 80, 40], [51, 51, 51], [255, 255, 255], [255, 10, 0]]]


def test_noise_is_seeded_and_has_the_table_std():
    img = gradient(64, 64)
    a = np.asarray(perturb(img, "gaussian_noise", 1, seed=7)).astype(int)
    b = np.asarray(perturb(img, "gaussian_noise", 1, seed=8)).astype(int)
    assert not np.array_equal(a, b)
    # std 0.08 on the 0-1 scale = 20.4 grey levels; clipping at 0 and 255 shrinks it a little.
    diff = a - np.asarray(img).astype(int)
    assert 17.0 < diff.std() < 21.0
    # Pinned: numpy's default_rng(7) stream (PCG64), the same on every platform.
    assert int(np.asarray(perturb(gradient(), "gaussian_noise", 1, seed=7)).astype(int).sum()) == 265700


def test_blur_scales_with_size_and_keeps_a_flat_image():
    flat = Image.new("RGB", (50, 40), (10, 120, 250))
    assert perturb(flat, "gaussian_blur", 5, 0).tobytes() == flat.tobytes()

    def ramp(side: int, severity: int) -> int:  # pixels of a row between black and white, at an edge
        edge = np.zeros((side, side, 3), np.uint8)
        edge[:, side // 2 :] = 255
        row = np.asarray(perturb(Image.fromarray(edge), "gaussian_blur", severity, 0))[side // 2, :, 0]
        return int(((row > 0) & (row < 255)).sum())

    # A wider blur widens the ramp; the same severity on an image twice the size, twice the sigma.
    assert 0 < ramp(224, 1) < ramp(224, 5)
    assert ramp(224, 1) < ramp(448, 1)


def test_crop_window_follows_the_seed_and_is_resized_back():
    img = gradient(20, 10)
    # Severity 5 keeps 0.8 of each side: a 16x8 window at default_rng(seed)'s two draws.
    rng = np.random.default_rng(3)
    left, top = int(rng.integers(0, 5)), int(rng.integers(0, 3))
    expected = img.crop((left, top, left + 16, top + 8)).resize((20, 10), Image.Resampling.BICUBIC)
    assert perturb(img, "crop", 5, seed=3).tobytes() == expected.tobytes()
    # Severity 1 keeps 0.96: round(50 * 0.96) = 48, a 48x48 window of a 50 px side
    rng = np.random.default_rng(5)
    left, top = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    img = gradient(50, 50)
    expected = img.crop((left, top, left + 48, top + 48)).resize((50, 50), Image.Resampling.BICUBIC)
    assert perturb(img, "crop", 1, seed=5).tobytes() == expected.tobytes()


def test_rotate_fills_corners_black_and_keeps_the_centre():
    white = Image.new("RGB", (41, 41), (255, 255, 255))
    out = np.asarray(perturb(white, "rotate", 5, seed=0))
    assert out[0, 0].tolist() == [0, 0, 0] and out[20, 20].tolist() == [255, 255, 255]
    # The direction is the seed's: default_rng(0) draws 1 (counter-clockwise), default_rng(1) 0.
    img = gradient(41, 41)
    assert perturb(img, "rotate", 2, 0).tobytes() == img.rotate(10, Image.Resampling.BILINEAR).tobytes()
    assert perturb(img, "rotate", 2, 1).tobytes() == img.rotate(-10, Image.Resampling.BILINEAR).tobytes()


def test_jpeg_quality_falls_with_severity():
    img = gradient(64, 64)
    errors = [np.abs(np.asarray(perturb(img, "jpeg", s, 0)).astype(int) - np.asarray(img)).mean() for s in (1, 5)]
    assert 0 < errors[0] < errors[1]


def test_parse_perturbations():
    assert parse_perturbations("jpeg:3, rotate:1,jpeg:3") == [("jpeg", 3), ("rotate", 1)]
    assert parse_perturbations(["crop"]) == [("crop", s) for s in range(1, 6)]
    assert parse_perturbations([]) == []
    with pytest.raises(UserError, match="unknown perturbation 'fog'; the known ones are gaussian_blur, "):
        parse_perturbations("jpeg:1,fog:x")
    for bad in ("jpeg:6", "jpeg:0", "jpeg:x", "jpeg:-1", "jpeg:", "jpeg:3:4", "jpeg:1.0"):
        with pytest.raises(UserError, match="outside 1-5"):
            parse_perturbations(bad)
    with pytest.raises(UserError, match="empty perturbation"):
        parse_perturbations("jpeg:1,,crop")


def test_perturb_seed_is_stable():
    assert perturb_seed("q1", "jpeg", 1, 0) == perturb_seed("q1", "jpeg", 1, 0)
    assert (
        len(
            {
                perturb_seed("q1", "jpeg", 1, 0),
                perturb_seed("q2", "jpeg", 1, 0),
                perturb_seed("q1", "jpeg", 2, 0),
                perturb_seed("q1", "crop", 1, 0),
                perturb_seed("q1", "jpeg", 1, 1),
            }
        )
        == 5
    )
