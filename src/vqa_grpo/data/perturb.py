"""Image perturbations at severities 1-5, in the style of ImageNet-C (Hendrycks and Dietterich,
2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations").

Pure functions of (image, name, severity, seed): RGB in, RGB out, the same size. Used by
``vqa-grpo evaluate --perturb`` (evaluation/robustness.py) and by training-time augmentation.

Each name's parameter at severities 1..5 (``PARAMETERS``); values on a 0-1 pixel scale:

=============== =============================== =================================================
name            parameter, severity 1..5        what is done
=============== =============================== =================================================
gaussian_blur   sigma 1, 2, 3, 4, 6 px at 224   PIL's Gaussian blur; sigma scaled by min(w, h)/224
gaussian_noise  std .08, .12, .18, .26, .38     add N(0, std) per pixel and channel, clip to 0-1
jpeg            quality 25, 18, 15, 10, 7       encode as JPEG at that quality, decode
brightness      +.1, +.2, +.3, +.4, +.5         raise HSV value by that, clip at 1 (hue and
                                                saturation kept: each pixel's RGB times (v+c)/v)
contrast        factor .4, .3, .2, .1, .05      per channel: mean + factor * (x - mean)
crop            keep .96, .92, .88, .84, .8 of  a window that keeps that share of the width and
                a side                          of the height, placed at random, resized back
                                                (bicubic) to the original size
rotate          5, 10, 15, 20, 30 degrees       rotate about the centre by that angle, clockwise
                                                or not at random (bilinear); size kept, the
                                                corners filled black
=============== =============================== =================================================

All but two keep the image's content. ``crop`` and ``rotate`` can remove some: the crop cuts
off the image's borders, the rotation its corners, and an object there is clipped or, rarely,
gone (docs/evaluation.md has how often, on the synthetic images). A count or
"is there" question can then have another answer: a drop under these two mixes robustness with
lost information.

The noise, the crop's position and the rotation's direction come from
``numpy.random.default_rng(seed)``; the other perturbations ignore the seed. ``perturb_seed``
derives one seed per (example, perturbation, severity, run seed), so that two models evaluated
with the same seed see the same perturbed images.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageFilter

from vqa_grpo.errors import UserError

PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (1, 2, 3, 4, 6),
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "jpeg": (25, 18, 15, 10, 7),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "crop": (0.96, 0.92, 0.88, 0.84, 0.8),
    "rotate": (5, 10, 15, 20, 30),
}
"""Each perturbation's parameter at severities 1..5 (the table in the module's docstring)."""

PERTURBATIONS: tuple[str, ...] = tuple(PARAMETERS)
"""The perturbation names, in the order of the table."""

SEVERITIES = (1, 2, 3, 4, 5)

BLUR_REFERENCE_SIDE = 224
"""The image side ImageNet-C's blur sigmas are given for; other sizes scale them."""


def _unit(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0  # [H, W, 3] in 0-1


def _image(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def _blur(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    scaled = sigma * min(image.size) / BLUR_REFERENCE_SIDE
    return image.filter(ImageFilter.GaussianBlur(radius=scaled))  # PIL's radius is the std


def _noise(image: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    x = _unit(image)
    return _image(x + rng.normal(0.0, std, size=x.shape))


def _jpeg(image: Image.Image, quality: float, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return img.convert("RGB")


def _brightness(image: Image.Image, c: float, rng: np.random.Generator) -> Image.Image:
    x = _unit(image)
    v = x.max(axis=2, keepdims=True)  # HSV value
    # Hue and saturation are ratios of the channels to v, so a new value scales all three.
    scale = np.where(v > 0, np.minimum(v + c, 1.0) / np.maximum(v, 1e-12), 1.0)
    out = x * scale
    out = np.where(v > 0, out, np.minimum(c, 1.0))  # black has no hue: it becomes grey c
    return _image(out)


def _contrast(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    x = _unit(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - means) * factor + means)


def _crop(image: Image.Image, keep: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    return image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)


def _rotate(image: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    sign = 1 if rng.integers(0, 2) else -1  # PIL's positive angle is counter-clockwise
    return image.rotate(sign * degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0))


_APPLY = {
    "gaussian_blur": _blur,
    "gaussian_noise": _noise,
    "jpeg": _jpeg,
    "brightness": _brightness,
    "contrast": _contrast,
    "crop": _crop,
    "rotate": _rotate,
}


def _check(name: str, severity: int) -> None:
    if name not in PARAMETERS:
        raise UserError(f"unknown perturbation {name!r}; the known ones are {', '.join(PERTURBATIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise UserError(f"perturbation {name}: severity {severity!r} is outside 1-5; give an integer from 1 to 5")


def perturb(image: Image.Image, name: str, severity: int, seed: int) -> Image.Image:
    """``image`` perturbed by ``name`` at ``severity`` (1-5): a new RGB image of the same size.

    Deterministic for (image, name, severity, seed); the seed drives the noise, the crop's
    position and the rotation's direction (``numpy.random.default_rng(seed)``).
    """
    _check(name, severity)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    rng = np.random.default_rng(seed)
    return _APPLY[name](rgb, PARAMETERS[name][severity - 1], rng)


def parse_perturbations(spec: str | list[str]) -> list[tuple[str, int]]:
    """``"NAME[:SEVERITY],..."`` (or a list of such items) as ``[(name, severity), ...]``, in the
    order given, each pair once; a NAME without a severity stands for severities 1-5. An unknown
    name, or a severity that is not an integer from 1 to 5, raises UserError."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    out: list[tuple[str, int]] = []
    for item in items:
        item = item.strip()
        name, colon, level = item.partition(":")
        name, level = name.strip(), level.strip()
        if not name:
            raise UserError(
                f"empty perturbation in {spec!r}; write NAME[:SEVERITY],... with NAME one of {', '.join(PERTURBATIONS)}"
            )
        _check(name, SEVERITIES[0])  # an unknown name first, whatever its severity
        if not colon:
            pairs = [(name, s) for s in SEVERITIES]
        elif level.isascii() and level.isdigit():
            pairs = [(name, int(level))]
        else:
            raise UserError(f"perturbation {item!r}: severity {level!r} is outside 1-5; give an integer from 1 to 5")
        for pair in pairs:
            _check(*pair)
            if pair not in out:
                out.append(pair)
    return out


def perturb_seed(example_id: str, name: str, severity: int, seed: int) -> int:
    """A seed for one example's perturbed image, the same in every process and every run with
    ``seed`` (a hash, not Python's salted ``hash``), so that two models see the same image."""
    digest = hashlib.sha256(f"{example_id}\0{name}\0{severity}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def label(name: str, severity: int) -> str:
    """The key a perturbation's results go under: ``NAME:SEVERITY``."""
    return f"{name}:{severity}"
