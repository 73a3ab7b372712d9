"""One source of truth for configuration.

Nested dataclasses hold every setting with its default and meaning (the reward and eval sections
in config_scoring.py, re-exported here). A run's config is built in this order: the dataclass
defaults, then a YAML file, then ``section.key=value`` overrides from the command line (the value
is parsed as YAML, so ``grpo.temperatures=[0.7,1.0]`` and ``model.lora=true`` work). Unknown keys,
wrong types and impossible values raise :class:`ConfigError` with a one-line message, before any
model loads.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from vqa_grpo.config_scoring import EvalConfig, RewardConfig  # two sections of Config, importable from here
from vqa_grpo.errors import ConfigError as ConfigError  # the config's error, importable from here


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
    """Image: a path (relative to data.image_root), bytes, or a datasets Image; a list of them
    (TRL's ``images`` column, read when this is the default and absent) gives several, in order."""
    video: str = "video"
    """Video: a video file (a path, or its bytes) or a list of frame images, in time order."""
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
    """Stream an hf: dataset instead of downloading it first; kept images go to a temporary spill
    file as they stream past (data/spill.py), not into memory."""
    preset: Optional[str] = None
    """Column mapping of a known Hub dataset (docs/data_hub.md); None picks it from the hf: name,
    "none" turns it off; name one to map a local copy read as hf:FOLDER."""
    eval_fraction: float = 0.1
    """Fraction held out for evaluation (seeded, stratified by answer type); seed: 90/10."""
    max_train_samples: Optional[int] = None
    """Keep at most this many training examples (the seed's quick runs use 20)."""
    max_eval_samples: Optional[int] = None
    """Keep at most this many evaluation examples (the seed's quick runs use 10): a draw seeded by
    train.seed and stratified by answer type, the same in ``vqa-grpo evaluate``."""
    max_skip_fraction: float = 0.1
    """Stop with an error when more than this fraction of rows is skipped as bad."""
    allow_outside_root: bool = False
    """Allow image paths that leave the image root."""
    max_image_pixels: int = 1_000_000
    """Images with more pixels are downscaled (aspect kept) when opened; 0 keeps the full size."""
    video_frames: int = 8
    """Most frames sampled from a video (evenly spread over the clip when its rate gives more)."""
    video_fps: float = 1.0
    """Frames per second sampled from a video file; a video given as a list of frames is taken to
    be at this rate."""
    cache_dir: Optional[str] = None
    """Folder of the loaded-examples index (data/cache.py: the examples written once as a
    memory-mapped Arrow file, keyed by the data files' sizes and times, shared by a run's
    processes); null: .vqa_grpo_cache beside the data (or ~/.cache/vqa_grpo/data); "none": none."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """Column mapping from the user's schema."""
    prompt_template: Optional[str] = None
    """The user turn's text, with {question} where the question goes; None takes the benchmark's
    (data.benchmark), else the seed report's "{question} Answer with a single word or short phrase."
    (reasoning mode: a request for <think>...</think><answer>...</answer>). Used by training,
    evaluation and the demo alike."""
    benchmark: Optional[str] = None
    """The benchmark the data is (docvqa, infovqa, chartqa, gqa, vqav2, textvqa, okvqa, aokvqa,
    vizwiz): its official metric, prompt and answer length; None takes the Hub preset's, else none."""


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
    log_completion_groups: Optional[int] = None
    """Question groups of a logged GRPO step written to completions.jsonl (raw and cleaned
    completions, rewards, advantages); null writes every group of the step, 0 none."""
    save_total_limit: int = 2
    """Keep at most this many checkpoint-<step>/ directories."""
    resume: Optional[str] = None
    """"auto" resumes from the latest checkpoint in output_dir, or a checkpoint path. The run's
    settings come back from the checkpoint's config.yaml: a key not set again takes its value, and
    one set to another value is refused (exit 2), except those a resume may change: train.max_steps,
    save_steps, save_total_limit, eval_steps, logging_steps, log_completion_groups, progress,
    report_to, wandb_project, device, cpu_threads, collective_timeout, max_bad_steps,
    empty_cuda_cache, offload_activations, merge_lora, eval.batch_size, eval.bootstrap_samples,
    model.gradient_checkpointing, grpo.logprob_chunk_size (and output_dir, resume, resume_allow: this
    launch's own)."""
    resume_allow: list[str] = field(default_factory=list)
    """Keys this resume may change besides those above (e.g. [train.learning_rate]); the run goes on
    with the new values from the checkpoint's step, and config.yaml records them (docs/long_runs.md)."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast (fp16 needs loss scaling, which the loop does not do: use bf16 or model.dtype)."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda"."""
    cpu_threads: int = 0
    """torch intra-op threads on the CPU; 0 keeps torch's default. Tiny models run fastest with 1."""
    eval_metric: Optional[str] = None
    """Metric that picks best/ (a key of metrics.json); null takes the benchmark's (data.benchmark:
    anls for DocVQA, ...; data/benchmarks.py), else vqa_accuracy."""
    collective_timeout: int = 600
    """Seconds a collective of several processes waits for a rank that hangs before the run stops
    (torch's default is 30 minutes); allow for the longest save of a checkpoint."""
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
    offload_activations: bool = False
    """CUDA: the tensors saved for backward (checkpointed activations) wait in pinned host memory (save_on_cpu)."""
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
    """Upper clip range (DAPO's clip-higher); None means epsilon. With loss_type=cispo: the cap of the
    importance weight itself (None: 5.0, ScaleRL's; TRL would take epsilon)."""
    loss_type: Literal["grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo", "seed_report"] = "grpo"
    """Loss aggregation and surrogate (see grpo/math.py, docs/grpo.md): cispo (MiniMax-M1) caps and
    detaches the importance weight, sapo (SAPO) gates it softly; "seed_report" is the seed report's
    degenerate formula (Bafna, 2025), for reproduction (the value "seed" is read as "seed_report")."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token, or one per completion from its mean token log-ratio (GSPO)."""
    sapo_temperature_pos: float = 1.0
    """SAPO's gate temperature for tokens with a positive advantage (TRL's default)."""
    sapo_temperature_neg: float = 1.05
    """SAPO's gate temperature for the other tokens (TRL's default)."""
    top_entropy_quantile: float = 1.0
    """q: only the completion tokens whose entropy is in the top q fraction of the micro-batch's keep
    a policy gradient (Wang et al., 2025, "Beyond the 80/20 Rule", who use 0.2); 1.0 keeps all."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: group std (DeepSeekMath), batch std, or none (Dr. GRPO)."""
    num_iterations: int = 1
    """mu, optimiser steps per rollout; ratios are taken against the rollout policy."""
    sft_coef: float = 0.0
    """lambda, weight of the MLE loss of the ground-truth answer added to the GRPO loss."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop the groups whose G rewards are all equal (or whose mean is outside
    [filter_low, filter_high]) and draw more questions until the step is full (grpo/dynamic.py)."""
    filter_low: float = 0.0
    """Dynamic sampling keeps a group when its mean reward, scaled to [0, 1] by the reward's range
    ((mean - least) / (greatest - least); rewards/registry.py reward_range), is >= this."""
    filter_high: float = 1.0
    """... and <= this (with 0 and 1 only the equal-rewards rule acts)."""
    max_resample_rounds: int = 4
    """Most resampling rounds per step; a round draws as many micro-batches as the step still lacks
    groups for (the most over processes). At the bound the step trains on the groups it kept
    (fewer), and logs dynamic/short=1."""
    mask_truncated_completions: bool = False
    """Drop completions that hit max_completion_length without EOS from the loss."""
    prioritized_sampling: bool = False
    """Draw questions by their recent mean reward, favouring those solved about half the time (the seed's
    5.3, "selective sampling"; training/priority.py, docs/sampling.md); false: the seeded epoch order.
    SFT ignores it."""
    priority_floor: float = 0.1
    """With prioritized_sampling: the least weight a question keeps (1 for medium difficulty), so that its
    probability never falls below priority_floor / N and no question starves; 1 draws uniformly."""
    priority_decay: float = 0.5
    """With prioritized_sampling: each question's mean reward is an EMA, new = decay x old + (1 - decay) x
    its latest group's mean (its first group's mean when first seen); 0 keeps only the latest."""
    augment: list[str] = field(default_factory=list)
    """NoisyRollout's augmented rollouts (grpo/augment.py): NAME[:SEVERITY] items of data/perturb.py
    (a NAME alone: severities 1-5); each group draws one and samples augment_share of its G
    completions on its image so perturbed; the loss sees the clean image. [] (default): off."""
    augment_share: float = 0.5
    """With grpo.augment: the share of each group's G completions sampled on the perturbed image
    (rounded half up; NoisyRollout: half)."""
    augment_schedule: Literal["constant", "linear_decay"] = "constant"
    """With grpo.augment: constant, or linear_decay: that share falls linearly to 0 at train.max_steps
    (NoisyRollout's annealing, applied to the share since severities are steps of 1-5)."""
    shared_prefix: Literal["auto", "on", "off"] = "auto"
    """Run each prompt and image once per group (KV cache shared by its G completions) when sampling
    and in the loss; auto: where the model family supports it (models/prefix.py), else G times."""
    fuse_prefill: Literal["auto", "off"] = "auto"
    """auto: with the shared prefix, the prompts' one pass (with gradient) serves both sampling and
    the loss, where that is exact (num_iterations 1, no dropout, one process and micro-batch;
    grpo/plan.py); off: sampling and the loss each run it."""
    static_decode: Literal["auto", "on", "off"] = "off"
    """Decode from the shared prefix on a static KV cache (models/static_decode.py), each step compiled
    as CUDA graphs on a GPU: auto on CUDA where it is exact, on also on the CPU (no graphs there),
    off (the default; docs/performance.md says why): the dynamic cache, step by step."""
    logprob_chunk_size: int = 256
    """Positions the LM head runs on at once in the log-prob passes (models/scoring.py,
    ``chunked_logprobs``): the peak's largest part."""
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
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Building a config (defaults <- YAML <- overrides, checked) is config_load.load_config: this module
# imports nothing of the package but errors and config_scoring, so that every layer may import it.


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what ``load_config`` reads back to the same Config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), for --help and the README."""
    src = inspect.getsource(cls)
    body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = str(b.value.value).strip()  # type: ignore[union-attr]
    return docs
