"""Where a row's image lives, the cheap check made when the data loads, and the lazy opener.

An image cell may be a path (relative to the image root), encoded bytes, a ``{"bytes", "path"}``
mapping (a ``datasets`` Image feature read without decoding) or a PIL image. ``resolve_image``
turns it into a source or a skip reason, ``check_image`` opens the header and verifies the file
(no full decode), and ``ImageLoader`` decodes it only when the trainer asks for it.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class StoredImage:
    """An image kept inside the data file (Parquet, Arrow): ``read`` fetches its cell again.

    Lets the examples hold a handle instead of the bytes, so a set is never held in memory.
    """

    read: Callable[[], Any]

    def bytes(self) -> bytes:
        return cell_bytes(self.read()) or b""


ImageSource = Path | bytes | Image.Image | StoredImage


def cell_bytes(cell: Any) -> bytes | None:
    """The encoded bytes held in a cell (bytes, or a mapping with a "bytes" entry), else None."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, dict) and isinstance(cell.get("bytes"), (bytes, bytearray, memoryview)):
        return bytes(cell["bytes"])
    return None


def resolve_image(value: Any, root: Path, allow_outside_root: bool) -> tuple[ImageSource | None, str, str]:
    """``(source, reason, detail)``: the source when usable, else a skip reason and what was seen."""
    if isinstance(value, (Image.Image, StoredImage)):
        return value, "", ""
    return resolve_file(value, root, allow_outside_root, "image")


FILE_KINDS = {
    "image": ("an image", "a PIL image", ""),
    "video": ("a video", "a list of frame images", "video "),
}
"""A file cell's kind -> how a skip's detail names it, its other accepted form, and the prefix of
an outside-root detail."""


def resolve_file(value: Any, root: Path, allow_outside_root: bool, kind: str) -> tuple[Path | bytes | None, str, str]:
    """A cell holding ``kind``'s ("image" or "video") file as encoded bytes, a ``{"bytes", "path"}``
    mapping or a path under ``root``: ``(source, reason, detail)`` as :func:`resolve_image`."""
    missing, (what, other, prefix) = f"missing_{kind}", FILE_KINDS[kind]
    data = cell_bytes(value)
    if data:
        return data, "", ""
    if isinstance(value, dict):
        value = value.get("path")
    if not isinstance(value, str):
        if value is None or (isinstance(value, float) and value != value):
            return None, missing, f"no {kind} in the cell"
        return None, missing, f"unsupported cell type {type(value).__name__}: {unsupported(value, what, other)}"
    if not value.strip():
        return None, missing, f"no {kind} in the cell"
    text = value.strip()
    # Lexical normalisation only: a symlinked image folder inside the root stays allowed.
    path = Path(os.path.normpath(root / text))
    if not allow_outside_root and not path.is_relative_to(root):
        return None, "outside_root", f"{prefix}{text} leaves the image root {root}"
    return path, "", ""


def unsupported(value: Any, what: str, other: str = "a PIL image") -> str:
    """The end of a skip's detail for a cell of a type no reader takes (a number, a nested list)."""
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{shown}; {what} is a path, encoded bytes, a {{'bytes', 'path'}} mapping or {other}"


def check_image(source: ImageSource) -> tuple[str, str]:
    """``(reason, detail)`` with reason "" when the image looks usable. Reads headers, not pixels.

    too_large: more pixels than PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    corrupt_image: PIL cannot identify the file or ``verify`` fails (bad checksum, truncated PNG).
    A truncated JPEG can pass ``verify``; it fails later, at decode, as a BadExample.
    """
    if isinstance(source, Image.Image):
        if _over_bomb_limit(source.width * source.height):
            return "too_large", f"{source.width}x{source.height} pixels"
        return "", ""
    if isinstance(source, Path):
        try:
            if not source.is_file():
                return "missing_image", f"{source} not found"
        except (OSError, ValueError):  # a name the OS refuses (too long, NUL byte)
            return "missing_image", f"{str(source)[:200]} is not a valid file name"
        opener, where = (lambda: open(source, "rb")), str(source)
    else:
        data = source.bytes() if isinstance(source, StoredImage) else source
        if not data:
            return "missing_image", "empty image bytes"
        opener, where = (lambda: io.BytesIO(data)), f"embedded image ({len(data)} bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with opener() as f, Image.open(f) as img:
                img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too_large", f"{where} has more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS}"
    except OSError as e:
        if isinstance(source, Path) and not isinstance(e, Image.UnidentifiedImageError) and e.errno is not None:
            return "missing_image", f"{where} cannot be read: {e.strerror}"
        return "corrupt_image", f"{where}: {e}"
    except Exception as e:  # PIL's plugins raise many types (SyntaxError, struct.error, ...) on bad data
        return "corrupt_image", f"{where}: {type(e).__name__}: {e}"
    return "", ""


def _over_bomb_limit(pixels: int) -> bool:
    return Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ImageLoader:
    """Opens one image on call: RGB, EXIF orientation applied, at most ``max_pixels`` pixels.

    Picklable (no closures), so data-loader workers can receive the examples.
    """

    source: ImageSource
    max_pixels: int = 0
    """Downscale (aspect kept) to at most this many pixels; 0 keeps the full size."""

    def __call__(self) -> Image.Image:
        source = self.source
        if isinstance(source, Image.Image):
            return to_rgb(source, self.max_pixels)
        if isinstance(source, StoredImage):
            source = source.bytes()
        fp = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)
        with fp, Image.open(fp) as img:
            _draft(img, self.max_pixels)
            return to_rgb(img, self.max_pixels)

    def describe(self) -> str:
        """A short human description of where the image comes from."""
        if isinstance(self.source, Path):
            return str(self.source)
        if isinstance(self.source, Image.Image):
            return "in-memory PIL image"
        return "image stored in the data file"


def _draft(img: Image.Image, max_pixels: int) -> None:
    """Let JPEG decode at a reduced scale when the image is far over the cap (much faster)."""
    pixels = img.width * img.height
    if img.format == "JPEG" and max_pixels and pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
        img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))


def to_rgb(img: Image.Image, max_pixels: int = 0) -> Image.Image:
    """A new RGB image: EXIF orientation applied, alpha composited on white, 16-bit scaled to 8."""
    img = ImageOps.exif_transpose(img)  # returns a transposed copy, or a plain copy
    img = _rgb_mode(img)
    pixels = img.width * img.height
    if max_pixels and pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
        size = (max(1, math.floor(img.width * scale)), max(1, math.floor(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
    return img


def _rgb_mode(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grey: PIL's own convert clips at 255, which turns most of the image white.
        values = np.asarray(img, dtype=np.float64)
        if values.size and values.max() > 255:
            values = values / 257.0  # 65535 -> 255
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # Transparent pixels become white: VLM processors expect opaque RGB.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr
