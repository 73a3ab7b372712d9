"""One source of truth for configuration.

Nested dataclasses hold every setting with its default and meaning. A run's config is built in
this order: the dataclass defaults, then a YAML file, then ``section.key=value`` overrides from the
command line (the value is parsed as YAML, so ``grpo.temperatures=[0.7,1.0]`` and
``model.lora=true`` work). Unknown keys, wrong types and impossible values raise
:class:`ConfigError` with a one-line message, before any model loads.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from vqa_grpo.errors import UserError


class ConfigError(UserError):
    """A config key, type or value that is not allowed."""


@dataclass
class ModelConfig:
    name_or_path: str = ""
    """Hub id or local directory of the model (and its processor)."""
    family: str = "auto"
    """Model family adapter (qwen2_vl, qwen2_5_vl, llava, llava_next, idefics3, smolvlm, gemma3,
    phi4_multimodal, phi3_v, generic); "auto" detects it from ``config.model_type``."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype the weights are loaded in."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel: sdpa, eager, or flash_attention_2 when installed."""
    trust_remote_code: bool = False
    """Run code shipped with the model. Off unless asked for; ignored for Phi-3-vision (native)."""
    gradient_checkpointing: bool = False
    """Non-reentrant activation checkpointing: trade compute for memory (seed 4.1)."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps the old/reference log-probs of GRPO deterministic."""
    lora_target_modules: Optional[list[str]] = None
    """Module names to adapt; None takes the family's default (the language model's projections)."""
    freeze_vision: bool = False
    """Freeze the vision tower in full fine-tuning (LoRA leaves it out by default anyway)."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the frozen base weights in 4-bit NF4 or 8-bit with bitsandbytes (QLoRA; needs
    model.lora=true, a CUDA device and ``pip install vqa-grpo[quant]``)."""
    num_crops: Optional[int] = None
    """Phi-3/3.5-vision only: the processor's number of 336 px crops per image (the checkpoint's
    default when null: 16 for Phi-3-vision; Microsoft suggests 4 for single images on Phi-3.5)."""


@dataclass
class ColumnsConfig:
    """Which column of the user's data holds each field."""

    image: str = "image"
    """Image: a path (relative to data.image_root), bytes, or a datasets Image."""
    question: str = "question"
    """The question text."""
    answer: str = "answer"
    """The single answer (the SFT target; VQA v2's multiple_choice_answer)."""
    answers: str = "answers"
    """All reference answers: a list (VQA v2's 10) or one string."""
    question_type: str = "question_type"
    """Question type; inferred from VQA v2's prefixes when the column is absent."""
    answer_type: str = "answer_type"
    """Answer type (yes/no, number, other); inferred from the answers when absent."""
    id: str = "id"
    """Unique example id; a row number when absent."""


@dataclass
class DataConfig:
    path: str = ""
    """Data file or directory (JSONL, CSV, JSON, Parquet, datasets on disk, VQA v2 pair), or
    hf:NAME: a Hugging Face Hub dataset (or a folder laid out as one), read by datasets.load_dataset."""
    image_root: Optional[str] = None
    """Folder that relative image paths start from; None means the data file's folder."""
    format: str = "auto"
    """Data format; "auto" infers it from the files."""
    eval_path: Optional[str] = None
    """A separate evaluation file; when unset, ``eval_fraction`` of ``path`` is held out."""
    split: str = "train"
    """Split of an hf: dataset (e.g. train, validation; "train[:1000]" slices unless streaming)."""
    eval_split: Optional[str] = None
    """Split of an hf: eval_path; None means data.split."""
    config_name: Optional[str] = None
    """Config (subset) of an hf: dataset with several; None takes the preset's, or the only one."""
    streaming: bool = False
    """Stream an hf: dataset instead of downloading it first; kept images then stay in memory."""
    preset: Optional[str] = None
    """Column mapping of a known Hub dataset (docs/data_hub.md); None picks it from the hf: name,
    "none" turns it off; name one to map a local copy read as hf:FOLDER."""
    eval_fraction: float = 0.1
    """Fraction held out for evaluation (seeded, stratified by answer type); seed: 90/10."""
    max_train_samples: Optional[int] = None
    """Keep at most this many training examples (the seed's quick runs use 20)."""
    max_eval_samples: Optional[int] = None
    """Keep at most this many evaluation examples (the seed's quick runs use 10)."""
    max_skip_fraction: float = 0.1
    """Stop with an error when more than this fraction of rows is skipped as bad."""
    allow_outside_root: bool = False
    """Allow image paths that leave the image root."""
    max_image_pixels: int = 1_000_000
    """Images with more pixels are downscaled (aspect kept) when opened; 0 keeps the full size."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """Column mapping from the user's schema."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, checkpoint-<step>/, best/, final/."""
    max_steps: int = 100
    """Number of optimiser steps."""
    per_device_batch_size: int = 4
    """Questions per micro-batch (GRPO samples num_generations completions for each)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimiser step."""
    learning_rate: float = 1e-5
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables it."""
    seed: int = 0
    """Seed for python, numpy and torch, and the data order."""
    save_steps: int = 0
    """Save a checkpoint every this many steps; 0 saves only the final model."""
    eval_steps: int = 0
    """Evaluate on the eval split every this many steps; 0 evaluates only at the end."""
    logging_steps: int = 1
    """Append metrics to metrics.jsonl every this many steps."""
    save_total_limit: int = 2
    """Keep at most this many checkpoint-<step>/ directories."""
    resume: Optional[str] = None
    """"auto" resumes from the latest checkpoint in output_dir, or a checkpoint path."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast (fp16 needs loss scaling, which the loop does not do: use bf16 or model.dtype)."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda"."""
    cpu_threads: int = 0
    """torch intra-op threads on the CPU; 0 keeps torch's default. Tiny models run fastest with 1."""
    eval_metric: str = "vqa_accuracy"
    """Metric that picks best/ (a key of metrics.json)."""
    max_bad_steps: int = 5
    """Stop after this many non-finite steps in a row."""
    progress: bool = True
    """Show progress bars."""
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    """Where metrics go besides metrics.jsonl: TensorBoard (output_dir/tensorboard), wandb (extra), or none."""
    wandb_project: str = "vqa-grpo"
    """wandb project when report_to=wandb; WANDB_MODE=offline logs without a network."""
    empty_cuda_cache: bool = False
    """Call torch.cuda.empty_cache() after every step (seed 5.1): less fragmentation, a little slower."""
    merge_lora: bool = False
    """With model.lora, also write output_dir/merged/: the adapter merged into the base weights."""


@dataclass
class GRPOConfig:
    num_generations: int = 4
    """G, completions sampled per question (seed: 4)."""
    temperatures: list[float] = field(default_factory=lambda: [0.7, 0.8, 0.9, 1.0])
    """Sampling temperature of completion g is temperatures[g % len]; one value = shared (seed 3.4)."""
    top_ps: list[float] = field(default_factory=lambda: [0.9, 0.85, 0.95, 0.8])
    """Nucleus threshold of completion g is top_ps[g % len]; one value = shared (seed 3.4)."""
    max_completion_length: int = 16
    """Most new tokens per completion."""
    beta: float = 0.0
    """KL coefficient against the reference model (k3 estimator); 0 skips the reference pass."""
    epsilon: float = 0.2
    """PPO clip range (lower, and upper unless epsilon_high is set)."""
    epsilon_high: Optional[float] = None
    """Upper clip range (DAPO's clip-higher); None means epsilon."""
    loss_type: Literal["grpo", "bnpo", "dapo", "dr_grpo", "seed"] = "grpo"
    """Loss aggregation (see grpo/math.py); "seed" is the seed's degenerate formula, for reproduction."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: group std (DeepSeekMath), batch std, or none (Dr. GRPO)."""
    num_iterations: int = 1
    """mu, optimiser steps per rollout; ratios are taken against the rollout policy."""
    sft_coef: float = 0.0
    """lambda, weight of the MLE loss of the ground-truth answer added to the GRPO loss."""
    mask_truncated_completions: bool = False
    """Drop completions that hit max_completion_length without EOS from the loss."""
    shared_prefix: Literal["auto", "on", "off"] = "auto"
    """Run each prompt and image once per group (KV cache shared by its G completions) when sampling
    and in the loss; auto: where the model family supports it (models/prefix.py), else G times."""
    fuse_prefill: Literal["auto", "off"] = "auto"
    """auto: with the shared prefix, the prompts' one pass (with gradient) serves both sampling and
    the loss, where that is exact (num_iterations 1, no dropout, one process and micro-batch;
    grpo/rollout.py); off: sampling and the loss each run it."""
    generation_backend: Literal["transformers", "vllm"] = "transformers"
    """Who samples the G completions: transformers' generate, or a colocated vLLM engine (extra, CUDA)."""
    vllm_sync_steps: int = 1
    """Push the policy's weights into vLLM every this many optimiser steps (k > 1 samples from older weights)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM may take (weights + KV cache); the trainer has the rest."""
    vllm_is_cap: float = 2.0
    """C of truncated importance sampling: each token's loss weight min(pi_old / pi_vllm, C)."""
    vllm_max_model_len: int = 4096
    """vLLM's context length (prompt with image tokens + completion): sizes its KV cache."""


@dataclass
class RewardConfig:
    components: list[str] = field(default_factory=lambda: ["composite"])
    """Reward functions: composite, vqa_accuracy, answer_type, format, semantic, or your own as
    package.module:function (TRL's convention, docs/python.md; logged as reward/function)."""
    weights: list[float] = field(default_factory=lambda: [1.0])
    """Weight of each component (same length, >= 0, sum to 1)."""
    composite_weights: dict[str, float] = field(
        default_factory=lambda: {
            "bleu1": 0.2,
            "exact_match": 0.3,
            "substring": 0.2,
            "jaccard": 0.1,
            "extractable": 0.2,
        }
    )
    """The seed's w1..w5 (section 3.3)."""
    reasoning: bool = False
    """Score the content of one <answer>...</answer> pair (the format reward then asks for it)."""
    number_partial_credit: bool = False
    """answer_type reward: partial credit for counts by distance to the true number."""


@dataclass
class EvalConfig:
    batch_size: int = 32
    """Questions per generate call."""
    max_new_tokens: int = 16
    """Most new tokens per answer."""
    do_sample: bool = False
    """Greedy by default; true samples with the seed's temperature 0.7 and top-p 0.9."""
    temperature: float = 0.7
    """Temperature when do_sample is true."""
    top_p: float = 0.9
    """Top-p when do_sample is true."""
    bootstrap_samples: int = 1000
    """Resamples for the 95% confidence intervals."""
    metrics: list[str] = field(default_factory=list)
    """Your own reward functions as extra metrics (package.module:function, TRL's convention), each
    reported under its function name beside the built-in ones; train.eval_metric may name one."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------------
# Building a config: defaults <- YAML <- overrides, with type checks.


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides; validated."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (give an existing YAML file to --config)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}; fix its syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (model:, data:, ...)")
        tree = loaded or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.max_steps=10)")
        _set_dotted(tree, key.strip(), _parse_value(raw))
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _build(cls: type, tree: Any, prefix: str) -> Any:
    name = prefix.rstrip(".") or "config"
    if not isinstance(tree, dict):
        raise ConfigError(f"{name} must be a mapping, got {type(tree).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        allowed = ", ".join(prefix + k for k in fields)
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; allowed here: {allowed}")
    kwargs = {}
    for key, value in tree.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def validate(cfg: Config) -> None:
    """Impossible values, each with a one-line error naming the key and what is allowed."""
    g, t, r, d = cfg.grpo, cfg.train, cfg.reward, cfg.data

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(g.num_generations >= 2, f"grpo.num_generations={g.num_generations}: must be >= 2 (a group needs two samples to compare)")
    need(len(g.temperatures) >= 1 and all(x > 0 for x in g.temperatures), "grpo.temperatures: need one or more values > 0")
    need(len(g.top_ps) >= 1 and all(0 < x <= 1 for x in g.top_ps), "grpo.top_ps: need one or more values in (0, 1]")
    need(g.max_completion_length >= 1, "grpo.max_completion_length must be >= 1")
    need(g.beta >= 0, f"grpo.beta={g.beta}: must be >= 0")
    need(g.epsilon > 0, f"grpo.epsilon={g.epsilon}: must be > 0")
    need(g.epsilon_high is None or g.epsilon_high > 0, "grpo.epsilon_high must be > 0 or null")
    need(g.num_iterations >= 1, "grpo.num_iterations must be >= 1")
    need(g.sft_coef >= 0, "grpo.sft_coef must be >= 0")
    need(g.vllm_sync_steps >= 1, f"grpo.vllm_sync_steps={g.vllm_sync_steps}: must be >= 1")
    need(0 < g.vllm_gpu_memory_utilization < 1, "grpo.vllm_gpu_memory_utilization must be in (0, 1)")
    need(g.vllm_max_model_len >= 16, f"grpo.vllm_max_model_len={g.vllm_max_model_len}: must be >= 16")
    need(g.vllm_is_cap >= 1, f"grpo.vllm_is_cap={g.vllm_is_cap}: must be >= 1 (1 clips every up-weighting)")
    need(t.max_steps >= 1, f"train.max_steps={t.max_steps}: must be >= 1")
    need(t.per_device_batch_size >= 1, "train.per_device_batch_size must be >= 1")
    need(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1")
    need(t.learning_rate >= 0, "train.learning_rate must be >= 0")
    need(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas: two values in [0, 1)")
    need(min(t.save_steps, t.eval_steps, t.warmup_steps) >= 0, "train.save_steps, eval_steps, warmup_steps must be >= 0")
    need(t.logging_steps >= 1, "train.logging_steps must be >= 1")
    need(not t.merge_lora or cfg.model.lora, "train.merge_lora=true needs model.lora=true (a full fine-tune has nothing to merge)")
    need(
        t.save_steps % g.num_iterations == 0,
        f"train.save_steps={t.save_steps} must be a multiple of grpo.num_iterations={g.num_iterations} "
        "(a checkpoint inside a reused rollout could not resume exactly)",
    )
    from vqa_grpo.rewards.user import import_reward, is_import_path, short_name

    for path in cfg.eval.metrics:
        need(is_import_path(path), f"eval.metrics: {path!r} is not an import path; write it as package.module:function")
        import_reward(path)
    metrics = ("vqa_accuracy", "composite", "bleu1", "exact_match", "substring", "jaccard", "extractable", "semantic",
               *(short_name(p) for p in cfg.eval.metrics))
    need(t.eval_metric in metrics, f"train.eval_metric={t.eval_metric!r}: choose one of {', '.join(metrics)}")
    need(0 <= d.eval_fraction < 1, f"data.eval_fraction={d.eval_fraction}: must be in [0, 1)")
    need(0 <= d.max_skip_fraction <= 1, "data.max_skip_fraction must be in [0, 1]")
    for key in ("max_train_samples", "max_eval_samples"):
        v = getattr(d, key)
        need(v is None or v >= 1, f"data.{key}={v}: must be >= 1 or null")
    need(bool(d.split.strip()), "data.split is empty; name a split of the hf: dataset (e.g. train or validation)")
    for key in ("eval_split", "config_name", "preset"):
        v = getattr(d, key)
        need(v is None or bool(v.strip()), f"data.{key} is empty; give a name or null")
    from vqa_grpo.data.hub import check_preset_key  # late: data imports config

    complaint = check_preset_key(d.preset)
    need(complaint is None, complaint or "")
    need(
        not (d.path.startswith("hf:") and d.eval_path == d.path and (d.eval_split or d.split) == d.split),
        f"data.eval_path is data.path with the same split {d.split!r}: the eval set would be the training set; "
        "set data.eval_split (e.g. validation) or drop data.eval_path",
    )
    m, e = cfg.model, cfg.eval
    need(m.lora_r >= 1, f"model.lora_r={m.lora_r}: must be >= 1")
    need(m.lora_alpha > 0, f"model.lora_alpha={m.lora_alpha}: must be > 0")
    need(0 <= m.lora_dropout < 1, f"model.lora_dropout={m.lora_dropout}: must be in [0, 1)")
    need(m.num_crops is None or m.num_crops >= 1, f"model.num_crops={m.num_crops}: must be >= 1 or null")
    need(m.quantization == "none" or m.lora, f"model.quantization={m.quantization} needs model.lora=true (quantized weights stay frozen)")
    need(e.batch_size >= 1, f"eval.batch_size={e.batch_size}: must be >= 1")
    need(e.max_new_tokens >= 1, f"eval.max_new_tokens={e.max_new_tokens}: must be >= 1")
    need(e.temperature > 0, f"eval.temperature={e.temperature}: must be > 0")
    need(0 < e.top_p <= 1, f"eval.top_p={e.top_p}: must be in (0, 1]")
    need(e.bootstrap_samples >= 1, f"eval.bootstrap_samples={e.bootstrap_samples}: must be >= 1")
    from vqa_grpo.rewards.registry import REWARD_COMPONENTS  # late: rewards import nothing of config
    unknown = [c for c in r.components if c not in REWARD_COMPONENTS and not is_import_path(c)]
    need(not unknown, f"reward.components: unknown {unknown[0] if unknown else ''!r}; choose from "
                      f"{', '.join(REWARD_COMPONENTS)}, or name your own function as package.module:function")
    for c in r.components:
        if is_import_path(c):
            import_reward(c)  # a typo in the path stops here, naming the module or attribute
    need(len(r.components) >= 1, "reward.components: need at least one reward")
    need(len(r.weights) == len(r.components), f"reward.weights has {len(r.weights)} values for {len(r.components)} reward.components; give one weight each")
    _check_weights(r.weights, "reward.weights")
    expected = {"bleu1", "exact_match", "substring", "jaccard", "extractable"}
    need(set(r.composite_weights) == expected, f"reward.composite_weights: give exactly the keys {', '.join(sorted(expected))}")
    _check_weights(list(r.composite_weights.values()), "reward.composite_weights")


def _check_weights(weights: list[float], key: str) -> None:
    if any(w < 0 for w in weights):
        raise ConfigError(f"{key}: weights must be >= 0, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ConfigError(f"{key}: weights must sum to 1 (within 1e-6), got sum {sum(weights):.6g}")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what ``load_config`` reads back to the same Config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), for --help and the README."""
    import ast
    import inspect

    src = inspect.getsource(cls)
    body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = str(b.value.value).strip()  # type: ignore[union-attr]
    return docs
