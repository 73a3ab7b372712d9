"""Load a VLM, its processor and its family adapter from a hub id or a local directory."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from PIL import Image
from safetensors import SafetensorError
from transformers import AutoConfig, BitsAndBytesConfig
from transformers.utils import cached_file

import vqa_grpo.models.phi3_v  # noqa: F401  registers phi3_v with the auto classes
from vqa_grpo.config import ModelConfig
from vqa_grpo.data.types import BadExample, Video
from vqa_grpo.errors import UserError
from vqa_grpo.models.adapters import FamilyAdapter, adapter_for
from vqa_grpo.models.lora_base import adapter_base, record_base

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    adapter: FamilyAdapter


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is visible; use train.device=cpu")
    return torch.device(name)


def check_model_dir(path: str) -> None:
    """Fail early, with one line, on a local directory that cannot hold a model and processor."""
    p = Path(path)
    if not path:
        raise UserError("model.name_or_path is empty; set it to a hub id or a model directory")
    looks_local = p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if not looks_local:
        return  # a hub id: transformers resolves it
    if not p.is_dir():
        raise UserError(f"model directory not found: {p} (build one with `vqa-grpo model tiny --out DIR`)")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        raise UserError(f"{p} has no config.json: not a transformers model directory")
    if not any((p / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        raise UserError(f"{p} has no processor (processor_config.json); save the processor with the model")


NATIVE_MODEL_TYPES = ("phi3_v",)
"""Model types whose hub checkpoints ship remote code that vqa-grpo replaces by its own classes."""


def _local_model_type(path: str) -> str | None:
    """config.json's model_type, read as JSON (no code run): a local directory's, or a hub id's
    (from the cache, or downloaded); None when it cannot be had."""
    file = Path(path) / "config.json"
    if not file.is_file():
        try:
            found = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
        except Exception:  # offline, unknown id: AutoConfig reports it below
            return None
        if not found:
            return None
        file = Path(found)
    try:
        return json.loads(file.read_text()).get("model_type")
    except (OSError, ValueError):
        raise UserError(f"{file} is not valid JSON; re-save the model or restore config.json") from None


def native_config(path: str, cfg: ModelConfig, warn: bool = True) -> ModelConfig:
    """``cfg`` with trust_remote_code off for a checkpoint of a natively implemented model type
    (Phi-3-vision): vqa-grpo loads it with its own classes and runs none of the checkpoint's code.
    The user's setting itself is left as it is (vLLM reads it: docs/models.md). ``warn``: say so
    (once a run: the load does, not the look-up of the family before it)."""
    if not (cfg.trust_remote_code and _local_model_type(path) in NATIVE_MODEL_TYPES):
        return cfg
    if warn:
        logging.getLogger("vqa_grpo").warning(
            "model.trust_remote_code=true is ignored for %s: phi3_v loads with vqa-grpo's native "
            "implementation, and no code from the checkpoint is run",
            path,
        )
    return dataclasses.replace(cfg, trust_remote_code=False)


def _read_config(path: str, cfg: ModelConfig):
    """The model's transformers config; one line when it is missing or needs remote code."""
    trust = cfg.trust_remote_code
    _check_json(Path(path).expanduser() / "config.json")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except OSError:
        raise UserError(f"model {path} not found: not a local directory, and not on the hub or in the cache") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(
                f"{path} ships its own model code (not part of transformers); "
                "set model.trust_remote_code=true if you trust it"
            ) from None
        raise UserError(f"cannot read the model config of {path}: {e}") from None


def _check_json(file: Path) -> None:
    """A local config.json that is not JSON, said so (transformers reports it as not found)."""
    try:
        json.loads(file.read_text()) if file.is_file() else None
    except ValueError as e:
        where = f"line {e.lineno}, column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise UserError(
            f"config.json in {file.parent} is not valid JSON ({where}); restore it from the model's download "
            "or save the model again"
        ) from None


def _quantization(cfg: ModelConfig, device: torch.device) -> dict:
    """from_pretrained arguments for 4-bit (NF4, double quantisation) or 8-bit bitsandbytes weights."""
    if cfg.quantization == "none":
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(
            f"model.quantization={cfg.quantization} needs bitsandbytes: pip install 'vqa-grpo[quant]'"
        ) from None
    if device.type != "cuda":
        raise UserError(f"model.quantization={cfg.quantization} needs a CUDA device; set model.quantization=none")

    if cfg.quantization == "4bit":
        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[cfg.dtype],
        )
    else:
        q = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": q, "device_map": {"": device}}


def with_user_settings(hf_config, cfg: ModelConfig):
    """A copy of the checkpoint's config with the user's attention implementation and dtype set on
    it and on every sub-config (the vision tower's, the text model's).

    A config.json may name its own: the Phi-3-vision download says ``"_attn_implementation":
    "flash_attention_2"`` and ``"torch_dtype": "bfloat16"``. Passed only as ``from_pretrained``
    arguments, the user's choice is applied before the json's keys, which win, so a machine without
    flash-attn could not load the model at all. Set on the config object here, it is what the
    model is built with."""
    config = copy.deepcopy(hf_config)
    config._attn_implementation = cfg.attn_implementation  # transformers' setter: sub-configs too
    config.dtype = DTYPES[cfg.dtype]
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "dtype"):
            sub.dtype = DTYPES[cfg.dtype]
    return config


def _from_pretrained(adapter: FamilyAdapter, base_path: str, cfg: ModelConfig, extra: dict, hf_config=None):
    auto = getattr(transformers, adapter.auto_model)
    if hf_config is None:
        hf_config = _read_config(base_path, cfg)
    try:
        model, info = auto.from_pretrained(
            base_path,
            config=with_user_settings(hf_config, cfg),
            dtype=DTYPES[cfg.dtype],
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
            output_loading_info=True,
            ignore_mismatched_sizes=adapter.strict_weights,  # reported by _check_weights, naming the key
            **extra,
        )
    except ImportError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "flash" in first.lower() and cfg.attn_implementation == "flash_attention_2":
            raise UserError(
                f"model.attn_implementation=flash_attention_2 cannot be used ({first}); "
                "install flash-attn or set model.attn_implementation=sdpa"
            ) from None
        where = "its remote code" if cfg.trust_remote_code else "it"
        raise UserError(f"cannot load {base_path}: {where} failed to import ({first})") from None
    except ValueError as e:  # an implementation this architecture does not support
        text = str(e).lower()
        if not ("support" in text and ("attention" in text or "attn" in text)):
            raise
        other = {"flash_attention_2": "sdpa", "sdpa": "eager"}.get(cfg.attn_implementation, "sdpa")
        raise UserError(
            f"model.attn_implementation={cfg.attn_implementation} cannot be used with {base_path} "
            f"({_first_line(e).split('. ')[0]}); set model.attn_implementation={other}"
        ) from None
    except RuntimeError as e:  # a weight whose shape is not the config's
        if "size mismatch" not in str(e):
            raise
        raise UserError(
            f"{base_path} has a misshaped weight: {_first_line(e)}; the checkpoint does not match its config.json"
        ) from None
    except (OSError, SafetensorError) as e:  # a shard the index names is absent, a truncated file
        raise UserError(
            f"cannot read the weights of {base_path}: {_first_line(e)}; the checkpoint is incomplete "
            "(download or save it again)"
        ) from None
    if adapter.strict_weights:
        _check_weights(base_path, info)
    return model


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _check_weights(path: str, info: dict) -> None:
    """Refuse a checkpoint with missing or misshaped weights, naming the first one."""
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, *shapes = mismatched[0] if isinstance(mismatched[0], tuple) else (mismatched[0],)
        got = f" ({shapes[0]} in the checkpoint, {shapes[1]} expected)" if len(shapes) == 2 else ""
        raise UserError(f"{path}: weight {key} has the wrong shape{got}; the checkpoint does not match its config.json")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}: weight {missing[0]} is missing{more}; the checkpoint is incomplete or not phi3_v")


def freeze_vision_tower(model, adapter: FamilyAdapter) -> int:
    """Stop gradients into the vision tower (parameters matching ``adapter.vision_pattern``);
    returns how many parameter tensors were frozen."""
    pattern = re.compile(adapter.vision_pattern)
    frozen = 0
    for name, param in model.named_parameters():
        if pattern.fullmatch(name):
            param.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise UserError(f"model.freeze_vision=true but no parameter of this {adapter.name} model is a vision tower's")
    return frozen


def _resolve(cfg: ModelConfig, warn: bool = True):
    """(cfg as loaded, the base model's path, its transformers config, the family's adapter),
    from the config files alone; a saved LoRA adapter resolves to its base model. ``warn``: as
    native_config's."""
    check_model_dir(cfg.name_or_path)
    base_path = cfg.name_or_path
    if (Path(base_path) / "adapter_config.json").is_file():  # a saved LoRA adapter: its base model
        base_path = adapter_base(Path(base_path))
    cfg = native_config(base_path, cfg, warn)
    hf_config = _read_config(base_path, cfg)
    return cfg, base_path, hf_config, adapter_for(hf_config.model_type, cfg.family)


def family_adapter(cfg: ModelConfig) -> FamilyAdapter:
    """The model's family adapter, from its config.json (no weights loaded): what the run can
    refuse before the model loads."""
    return _resolve(cfg, warn=False)[3]


def load_model(cfg: ModelConfig, device: torch.device | str = "cpu", *, trainable: bool = True) -> LoadedModel:
    """The model (optionally quantized and wrapped with LoRA), its processor and its family adapter.

    The family's adapter picks the auto class (AutoModelForImageTextToText, or
    AutoModelForCausalLM for Phi-3-vision and Phi-4-multimodal) and the default LoRA targets.
    """
    device = torch.device(device)
    path = cfg.name_or_path
    adapter_dir = Path(path) / "adapter_config.json"
    cfg, base_path, hf_config, adapter = _resolve(cfg)
    processor = adapter.load_processor(path, cfg)
    quant = _quantization(cfg, device)
    model = _from_pretrained(adapter, base_path, cfg, quant, hf_config)
    if adapter_dir.is_file():
        from peft import PeftModel  # here: peft takes seconds to import, and only LoRA runs need it

        model = PeftModel.from_pretrained(model, path, is_trainable=trainable and cfg.lora)
        record_base(model, base_path)  # saved again (lora training on): absolute, as found
    elif cfg.lora and trainable:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if quant:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        targets = cfg.lora_target_modules or adapter.lora_targets()
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets
        )
        model = get_peft_model(model, lora)
        record_base(model, base_path)  # not the path as typed: the adapter must load from anywhere
    elif cfg.freeze_vision and trainable:
        freeze_vision_tower(model, adapter)
    if cfg.gradient_checkpointing and trainable:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LoadedModel(model if quant else model.to(device), processor, adapter)


def check_images(examples: list, lm: LoadedModel) -> list:
    """``examples`` whose images, once decoded (still lazily), are also checked by the family's
    processor (``adapter.image_problem``), each image of a list on its own, and each frame of a
    video where the family shows a video as its frames (Phi-3-vision): one it cannot lay out
    raises BadExample, so training and evaluation skip and count the example as they do an image
    that fails to decode. Unchanged for a family whose processor takes every image. (On a native
    video path, Qwen2-VL's, the frames go to the video processor, which image_problem does not judge.)"""
    if type(lm.adapter).image_problem is FamilyAdapter.image_problem:
        return examples
    check = functools.partial(lm.adapter.image_problem, lm.processor)
    frames = not lm.adapter.video_native
    if hasattr(examples, "mapped"):  # an ExampleTable (data/table.py): each example checked as it is made
        return examples.mapped(functools.partial(_with_check, check=check, frames=frames))
    return [_with_check(e, check, frames) for e in examples]


def _with_check(e, check, frames: bool = False):
    if frames and e.video_loader is not None:
        e = dataclasses.replace(e, video_loader=CheckedVideoLoader(e.video_loader, check, e.id))
    if e.image_loader is not None:
        return dataclasses.replace(e, image_loader=CheckedLoader(e.image_loader, check, e.id))
    if not e.image_loaders:
        return e
    n = len(e.image_loaders)
    loaders = tuple(CheckedLoader(f, check, e.id, f"image {i + 1} of {n}: ") for i, f in enumerate(e.image_loaders))
    return dataclasses.replace(e, image_loaders=loaders)


@dataclass(frozen=True)
class CheckedLoader:
    """An image loader whose image the family's processor checks (``check``: image -> problem or
    None); picklable, as data.images.ImageLoader, whose ``source`` it keeps (rewards/user.py reads it)."""

    inner: Callable[[], Image.Image]
    check: Callable[[Image.Image], str | None]
    example_id: str
    which: str = ""  # "image i of n: " for an image of a list

    @property
    def source(self):
        return getattr(self.inner, "source", None)

    def __call__(self) -> Image.Image:
        image = self.inner()
        problem = self.check(image)
        if problem:  # "unsupported_image": the name the run's skip counts use
            raise BadExample(self.example_id, self.which + problem, kind="unsupported_image")
        return image


@dataclass(frozen=True)
class CheckedVideoLoader:
    """A video loader whose frames the family's processor checks, each as an image (``check``:
    image -> problem or None), for families that show a video as its frames; picklable."""

    inner: Callable[[], Video]
    check: Callable[[Image.Image], str | None]
    example_id: str

    @property
    def source(self):
        return getattr(self.inner, "source", None)

    def __call__(self) -> Video:
        video = self.inner()
        n = len(video.frames)
        for i, frame in enumerate(video.frames):
            problem = self.check(frame)
            if problem:
                raise BadExample(self.example_id, f"frame {i + 1} of {n}: {problem}", kind="unsupported_image")
        return video


def check_visuals(adapter: FamilyAdapter, max_images: int, videos: int, what: str) -> None:
    """Refuse, in one line, data the family cannot show: more images to one question than it takes,
    or a video (``adapter.visual_problem``); ``what`` names the data (e.g. "data data/train.jsonl").
    Called once the data has loaded and before anything is written."""
    problem = adapter.visual_problem(max_images, videos > 0)
    if problem:
        raise UserError(f"{what}: {problem}")
