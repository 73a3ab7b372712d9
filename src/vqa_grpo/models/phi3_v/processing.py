"""Phi-3-vision's processor, native: the HD transform, the image-token count, the official tokenizer.

The image (checked equal to the official processor, docs/models.md):

1. RGB; a portrait image is transposed to landscape (width >= height), ratio = width / height.
2. The scale s is the largest with s * ceil(s / ratio) <= num_crops; the image is resized
   (bilinear, PIL) to width 336 s and height int(336 s / ratio), and its height padded with white
   to a multiple of 336 (centred: the odd row goes at the bottom); a portrait image is
   transposed back. That HD image is h x w crops of 336 px; ``image_sizes`` is its (height, width).
3. It is scaled to [0, 1] and normalised with CLIP's mean and std; the global view is that
   tensor resized to 336 x 336 (bicubic, torch). ``pixel_values`` is [global, crops row by row]
   zero-padded to num_crops + 1 views: [B, num_crops + 1, 3, 336, 336].
4. The image takes (h w + 1) 144 + 1 + (h + 1) 12 tokens, written as -k (image k of the text)
   between the text chunks; each chunk is tokenised on its own, with its BOS, as the official
   processor does.

Several texts per call are padded to the longest, on the side asked for.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerFast
from transformers.utils import cached_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TAG = re.compile(r"<\|image_\d+\|>")
# The official chat template (tokenizer_config.json of both checkpoints).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}"
    "{% endif %}"
)


def hd_scale(width: int, height: int, num_crops: int) -> int:
    """The largest s with s * ceil(s / ratio) <= num_crops, ratio = long side / short side."""
    ratio = max(width, height) / min(width, height)
    s = 1
    while s * math.ceil(s / ratio) <= num_crops:
        s += 1
    return s - 1


def hd_size(width: int, height: int, num_crops: int, crop: int = 336) -> tuple[int, int]:
    """(height, width) of the HD image: the resized image with its short side padded to whole crops."""
    long, short = max(width, height), min(width, height)
    new_long = hd_scale(width, height, num_crops) * crop
    new_short = math.ceil(int(new_long / (long / short)) / crop) * crop
    return (new_short, new_long) if width >= height else (new_long, new_short)


def num_image_tokens(height: int, width: int, crop: int = 336, side: int = 12) -> int:
    """Tokens of an HD image of (height, width): (h w + 1) side^2 + 1 + (h + 1) side."""
    h, w = height // crop, width // crop
    return (h * w + 1) * side * side + 1 + (h + 1) * side


def layout_problem(width: int, height: int, num_crops: int, crop: int = 336) -> str | None:
    """Why an image of this size cannot be laid out in crops (None when it can): so elongated that
    its short side resizes to 0 px (3000 x 2 at num_crops 1 or 4; the official processor fails too)."""
    if min(width, height) < 1:
        return f"the image is {width}x{height} pixels: empty"
    long, short = max(width, height), min(width, height)
    if int(hd_scale(width, height, num_crops) * crop / (long / short)) < 1:
        return (
            f"a {width}x{height} image is too elongated for Phi-3-vision at num_crops {num_crops} "
            "(its short side resizes to 0 px)"
        )
    return None


def hd_transform(image: Image.Image, num_crops: int, crop: int = 336) -> Image.Image:
    """Step 2: resize to the HD scale and pad the short side with white to whole crops."""
    problem = layout_problem(image.width, image.height, num_crops, crop)
    if problem:
        raise ValueError(problem)
    portrait = image.width < image.height
    if portrait:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    ratio = image.width / image.height
    new_w = hd_scale(image.width, image.height, num_crops) * crop
    new_h = int(new_w / ratio)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    target = math.ceil(new_h / crop) * crop
    padded = Image.new("RGB", (new_w, target), (255, 255, 255))
    padded.paste(image, (0, (target - new_h) // 2))
    return padded.transpose(Image.Transpose.TRANSPOSE) if portrait else padded


class Phi3VImageProcessor:
    """Images -> ``pixel_values`` [N, num_crops + 1, 3, 336, 336] and ``image_sizes`` [N, 2]."""

    crop = 336

    def __init__(self, num_crops: int = 16, image_mean=CLIP_MEAN, image_std=CLIP_STD, num_img_tokens: int = 144, **_):
        if not isinstance(num_crops, int) or num_crops < 1:
            raise ValueError(f"num_crops must be a positive integer, got {num_crops!r}")
        self.num_crops = num_crops
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.num_img_tokens = num_img_tokens

    def layout_problem(self, image: Image.Image) -> str | None:
        """Why ``image`` cannot be laid out at this processor's num_crops; None when it can."""
        return layout_problem(image.width, image.height, self.num_crops, self.crop)

    def views(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image's views [num_crops + 1, 3, 336, 336] and its HD (height, width)."""
        hd = hd_transform(image.convert("RGB"), self.num_crops, self.crop)
        x = torch.from_numpy(np.array(hd, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        x = (x - mean) / std
        H, W = x.shape[1:]
        S = self.crop
        glb = torch.nn.functional.interpolate(x[None], size=(S, S), mode="bicubic")
        crops = x.reshape(3, H // S, S, W // S, S).permute(1, 3, 0, 2, 4).reshape(-1, 3, S, S)
        views = torch.zeros(self.num_crops + 1, 3, S, S)
        views[0] = glb[0]
        views[1 : 1 + crops.shape[0]] = crops
        return views, (H, W)

    def __call__(self, images: list[Image.Image]) -> dict:
        out = [self.views(im) for im in images]
        sizes = [hw for _, hw in out]
        return {
            "pixel_values": torch.stack([v for v, _ in out]),
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
            "num_img_tokens": [num_image_tokens(h, w, self.crop) for h, w in sizes],
        }

    def to_dict(self) -> dict:
        return {
            "image_processor_type": "Phi3VImageProcessor",
            "processor_class": "Phi3VProcessor",
            "num_crops": self.num_crops,
            "num_img_tokens": self.num_img_tokens,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
        }


class Phi3VProcessor:
    """The image processor and the tokenizer: texts with ``<|image_k|>`` tags and their images."""

    special_image_token = "<|image|>"

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer, tokenizer_class: str | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.tokenizer_class = tokenizer_class  # written back to tokenizer_config.json
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHAT_TEMPLATE

    @property
    def chat_template(self) -> str:
        return self.tokenizer.chat_template

    @classmethod
    def from_pretrained(cls, path: str | Path, num_crops: int | None = None) -> "Phi3VProcessor":
        """From a checkpoint directory or hub id: preprocessor_config.json and the tokenizer files,
        read as files. The hub's own code files (``*_phi3_v.py``) are kept as text, never run, and
        written back by ``save_pretrained``: vLLM and the official code need them beside the weights."""
        spec_file = _file(path, "preprocessor_config.json")
        if spec_file is None:
            raise FileNotFoundError(f"{path} has no preprocessor_config.json")
        spec = json.loads(spec_file.read_text())
        if num_crops is not None:
            spec["num_crops"] = num_crops
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        config = _file(path, "tokenizer_config.json")
        tok_class = json.loads(config.read_text()).get("tokenizer_class") if config else None
        proc = cls(Phi3VImageProcessor(**spec), tokenizer, tok_class)
        proc.auto_map = spec.get("auto_map")
        proc.code_files = {n: f.read_text() for n in OFFICIAL_CODE_FILES if (f := _file(path, n)) is not None}
        proc.tokenizer_files = {n: f.read_bytes() for n in TOKENIZER_FILES if (f := _file(path, n)) is not None}
        proc._loaded_vocab = len(tokenizer)
        return proc

    def save_pretrained(self, out: str | Path) -> None:
        """The official files: preprocessor_config.json, the tokenizer files, the chat template
        in tokenizer_config.json.

        The tokenizer files of the checkpoint it was loaded from are written back byte for byte
        (the tokenizer is never changed in vqa-grpo): transformers 5 would rewrite tokenizer.json
        in a newer format (merges as pairs) and move ``additional_special_tokens`` to
        ``extra_special_tokens``, which the official code under transformers 4.40.2 cannot read."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        source = getattr(self, "tokenizer_files", {})
        as_loaded = "tokenizer.json" in source and len(self.tokenizer) == getattr(self, "_loaded_vocab", None)
        if as_loaded:
            for name, data in source.items():
                (out / name).write_bytes(data)
        else:
            self.tokenizer.save_pretrained(str(out))
        spec = self.image_processor.to_dict()
        if getattr(self, "auto_map", None):
            spec["auto_map"] = self.auto_map
        (out / "preprocessor_config.json").write_text(json.dumps(spec, indent=2) + "\n")
        config_path = out / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        wanted = {"chat_template": self.chat_template}
        if self.tokenizer_class:
            wanted["tokenizer_class"] = self.tokenizer_class
        if any(config.get(k) != v for k, v in wanted.items()):
            config.update(wanted)
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if not as_loaded:
            (out / "chat_template.jinja").unlink(missing_ok=True)
        for name, text in getattr(self, "code_files", {}).items():  # as the checkpoint had them
            (out / name).write_text(text)

    # ---- encoding ----

    def _ids(self, text: str, num_tokens: list[int]) -> list[int]:
        chunks = IMAGE_TAG.split(text)
        tags = [int(t[len("<|image_") : -2]) for t in IMAGE_TAG.findall(text)]
        if sorted(set(tags)) != list(range(1, len(set(tags)) + 1)):
            raise ValueError(f"image tags must be <|image_1|>, <|image_2|>, ... in a text; got {tags}")
        if len(set(tags)) != len(num_tokens):
            raise ValueError(f"the text has {len(set(tags))} image tags but {len(num_tokens)} images")
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            ids += self.tokenizer(chunk).input_ids
            if i < len(tags):
                ids += [-tags[i]] * num_tokens[tags[i] - 1]
        return ids

    def __call__(
        self, text=None, images=None, padding_side: str | None = None, return_tensors: str = "pt", **_
    ) -> BatchFeature:
        """``text``: one string or a list; ``images``: one list of images per text (or a flat list
        taken in order, each text using as many as it has tags)."""
        texts = [text] if isinstance(text, str) else list(text)
        per_text = _images_per_text(texts, images)
        flat = [im for ims in per_text for im in ims]
        vision = self.image_processor(flat) if flat else None
        counts = iter(vision["num_img_tokens"] if vision else [])
        rows = [self._ids(t, [next(counts) for _ in ims]) for t, ims in zip(texts, per_text)]
        P = max(len(r) for r in rows)
        side = padding_side or self.tokenizer.padding_side
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(rows), P), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), P), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(P - len(r), P) if side == "left" else slice(0, len(r))
            ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
        data = {"input_ids": ids, "attention_mask": mask}
        if vision:
            data.update(pixel_values=vision["pixel_values"], image_sizes=vision["image_sizes"])
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


# The tokenizer files a checkpoint may have, written back as they were (Phi3VProcessor.save_pretrained).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
)
OFFICIAL_CODE_FILES = (
    "configuration_phi3_v.py",
    "modeling_phi3_v.py",
    "image_embedding_phi3_v.py",
    "processing_phi3_v.py",
    "image_processing_phi3_v.py",
)


def _file(path: str | Path, name: str) -> Path | None:
    """``name`` of a checkpoint directory, or of a hub id (from the cache, or downloaded); None if absent."""
    local = Path(path) / name
    if local.is_file():
        return local
    if Path(path).is_dir():
        return None

    found = cached_file(str(path), name, _raise_exceptions_for_missing_entries=False)
    return Path(found) if found else None


def _images_per_text(texts: list[str], images) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in texts]
    if isinstance(images, Image.Image):
        images = [images]
    if all(isinstance(x, (list, tuple)) for x in images) and len(images) == len(texts):
        return [list(x) for x in images]
    flat, out = list(images), []
    for t in texts:
        n = len(set(IMAGE_TAG.findall(t)))
        out.append(flat[:n])
        flat = flat[n:]
    if flat:
        raise ValueError(f"{len(flat)} images left over: the texts have fewer image tags than images")
    return out
