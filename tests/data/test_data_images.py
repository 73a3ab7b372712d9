"""Image checks at load time and lazy opening: modes, EXIF, pixel cap, bombs, bad files."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa_grpo.data.images import ImageLoader, StoredImage, check_image, resolve_image, to_rgb
from vqa_grpo.data.types import BadExample, VQAExample


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels but holds no pixel data: enough for a bomb check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Modes to RGB.


def test_rgba_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)


def test_palette_with_transparency_from_a_png_file():
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0  # palette entry 0 is transparent
    loaded = ImageLoader(encode(img, "PNG"))()
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (0, 255, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)  # mode I;16
    loaded = ImageLoader(encode(img, "PNG"))()  # PNG reads 16-bit grey back as I or I;16
    assert loaded.mode == "RGB"
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("LA", "PNG"), ("RGB", "JPEG")])
def test_other_modes_become_rgb(mode, fmt):
    img = Image.new(mode, (8, 6))
    loaded = ImageLoader(encode(img, fmt))()
    assert loaded.mode == "RGB" and loaded.size == (8, 6)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    loaded = ImageLoader(encode(img, "JPEG", exif=exif.tobytes()))()
    assert loaded.size == (20, 40)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])  # JPEG takes the reduced-scale (draft) path
def test_pixel_cap_downscales_and_keeps_aspect(fmt):
    data = encode(Image.new("RGB", (2000, 1000), (10, 120, 30)), fmt)
    loaded = ImageLoader(data, max_pixels=500_000)()
    assert loaded.size == (1000, 500)
    assert ImageLoader(data, max_pixels=0)().size == (2000, 1000)
    assert ImageLoader(data, max_pixels=10_000_000)().size == (2000, 1000)


# ---------------------------------------------------------------------------------------------
# The load-time check.


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 12), "blue").save(good)
    png = good.read_bytes()
    paths = {
        "good": good,
        "garbage": tmp_path / "garbage.png",
        "truncated_png": tmp_path / "truncated.png",
        "bad_crc": tmp_path / "bad_crc.png",
        "bomb_error": tmp_path / "bomb_error.png",
        "bomb_warning": tmp_path / "bomb_warning.png",
    }
    paths["garbage"].write_bytes(b"this is not an image at all")
    paths["truncated_png"].write_bytes(png[: len(png) // 2])
    paths["bad_crc"].write_bytes(png[:-20] + bytes(b ^ 0xFF for b in png[-20:-12]) + png[-12:])
    # PIL refuses > 2 * MAX_IMAGE_PIXELS with an error and warns above MAX_IMAGE_PIXELS: both are too large.
    paths["bomb_error"].write_bytes(png_header_only(20_000, 20_000))
    paths["bomb_warning"].write_bytes(png_header_only(10_000, 10_000))
    return paths


@pytest.mark.parametrize(
    "name, reason",
    [
        ("good", ""),
        ("garbage", "corrupt_image"),
        ("truncated_png", "corrupt_image"),
        ("bad_crc", "corrupt_image"),
        ("bomb_error", "too_large"),
        ("bomb_warning", "too_large"),
    ],
)
def test_check_image_on_files_and_on_the_same_bytes(files, name, reason):
    assert check_image(files[name])[0] == reason
    assert check_image(files[name].read_bytes())[0] == reason
    assert check_image(StoredImage(lambda: {"bytes": files[name].read_bytes(), "path": None}))[0] == reason


def test_check_image_missing_file_and_folder(tmp_path):
    assert check_image(tmp_path / "nope.png")[0] == "missing_image"
    assert check_image(tmp_path)[0] == "missing_image"
    assert check_image(Path(str(tmp_path) + "/x\0y.png"))[0] == "missing_image"
    assert check_image(b"")[0] == "missing_image"


def test_check_in_memory_image_against_bombs(monkeypatch):
    img = Image.new("RGB", (100, 100))
    assert check_image(img)[0] == ""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 9_999)
    assert check_image(img)[0] == "too_large"


def test_truncated_jpeg_fails_at_decode_as_bad_example(tmp_path):
    path = tmp_path / "cut.jpg"
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    path.write_bytes(data[: len(data) // 2])
    example = VQAExample("cut", "q?", ["a"], "a", image_loader=ImageLoader(path))
    with pytest.raises(BadExample) as info:
        example.load_image()
    assert info.value.example_id == "cut"


# ---------------------------------------------------------------------------------------------
# Resolving image cells.


def test_resolve_paths_relative_to_root_and_refuse_leaving_it(tmp_path):
    root = tmp_path / "root"
    assert resolve_image("images/a.png", root, False) == (root / "images" / "a.png", "", "")
    assert resolve_image(str(root / "b.png"), root, False)[0] == root / "b.png"  # absolute inside: fine
    assert resolve_image("images/../../x.png", root, False)[1] == "outside_root"
    assert resolve_image("/etc/passwd", root, False)[1] == "outside_root"
    assert resolve_image("../x.png", root, True)[0] == tmp_path / "x.png"  # allowed by config


@pytest.mark.parametrize("cell", [None, "", "   ", 5, 2.5, ["a.png"], {"path": None, "bytes": None}, {}])
def test_resolve_cells_without_an_image(cell, tmp_path):
    assert resolve_image(cell, tmp_path, False)[:2] == (None, "missing_image")


def test_resolve_bytes_mappings_and_pil_images(tmp_path):
    data = encode(Image.new("RGB", (2, 2)), "PNG")
    assert resolve_image(data, tmp_path, False)[0] == data
    assert resolve_image({"bytes": data, "path": "ignored.png"}, tmp_path, False)[0] == data
    assert resolve_image({"bytes": None, "path": "a.png"}, tmp_path, False)[0] == tmp_path / "a.png"
    img = Image.new("RGB", (2, 2))
    assert resolve_image(img, tmp_path, False)[0] is img


def test_loader_is_picklable_and_reopens_the_same_pixels(files):
    loader = ImageLoader(files["good"], max_pixels=1000)
    again = pickle.loads(pickle.dumps(loader))
    assert np.array_equal(np.asarray(loader()), np.asarray(again()))
    assert again().size == (16, 12)
