"""The value checks of a built Config (``validate``): each impossible value, unknown name or
contradiction between settings is a one-line ConfigError naming the key and what is allowed. It
sits above the data and rewards layers, whose names it checks (Hub presets, benchmarks, prompt
templates, perturbations, reward components, metrics); they import config.py only."""

from __future__ import annotations

import typing

from vqa_grpo.config import Config, ConfigError, GRPOConfig
from vqa_grpo.config_keys import all_keys
from vqa_grpo.data.benchmarks import find_benchmark
from vqa_grpo.data.hub import check_preset_key
from vqa_grpo.data.perturb import parse_perturbations
from vqa_grpo.data.prompts import check_template
from vqa_grpo.errors import UserError
from vqa_grpo.rewards.benchmark import BENCHMARK_METRICS
from vqa_grpo.rewards.registry import REWARD_COMPONENTS
from vqa_grpo.rewards.user import import_reward, is_import_path, short_name

# (switch, key): grpo keys that act only while their feature is on; set otherwise, they are refused.
_FEATURE_KEYS = [("dynamic_sampling", "max_resample_rounds"), ("prioritized_sampling", "priority_floor")]
_FEATURE_KEYS += [("prioritized_sampling", "priority_decay"), ("augment", "augment_share")]
_FEATURE_KEYS += [("augment", "augment_schedule")]


def validate(cfg: Config, python_rewards: typing.Iterable[str] = ()) -> None:
    """Impossible values, each with a one-line error naming the key and what is allowed.
    ``python_rewards``: reward.components given as Python functions (see ``check_config``)."""
    g, t, r, d = cfg.grpo, cfg.train, cfg.reward, cfg.data

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(
        g.num_generations >= 2,
        f"grpo.num_generations={g.num_generations}: must be >= 2 (a group needs two samples to compare)",
    )
    need(
        len(g.temperatures) >= 1 and all(x > 0 for x in g.temperatures),
        "grpo.temperatures: need one or more values > 0",
    )
    need(len(g.top_ps) >= 1 and all(0 < x <= 1 for x in g.top_ps), "grpo.top_ps: need one or more values in (0, 1]")
    need(g.max_completion_length >= 1, "grpo.max_completion_length must be >= 1")
    need(g.beta >= 0, f"grpo.beta={g.beta}: must be >= 0")
    need(g.epsilon > 0, f"grpo.epsilon={g.epsilon}: must be > 0")
    need(g.epsilon_high is None or g.epsilon_high > 0, "grpo.epsilon_high must be > 0 or null")
    need(
        0 <= g.top_entropy_quantile <= 1,
        f"grpo.top_entropy_quantile={g.top_entropy_quantile}: must be in [0, 1] (1 keeps every token)",
    )
    need(
        g.sapo_temperature_pos > 0 and g.sapo_temperature_neg > 0,
        "grpo.sapo_temperature_pos and grpo.sapo_temperature_neg must be > 0",
    )
    need(g.num_iterations >= 1, "grpo.num_iterations must be >= 1")
    need(
        0 < g.priority_floor <= 1,
        f"grpo.priority_floor={g.priority_floor}: must be in (0, 1] (0 would let questions starve; 1 draws uniformly)",
    )
    need(
        0 <= g.priority_decay < 1,
        f"grpo.priority_decay={g.priority_decay}: must be in [0, 1) (1 would never take in a new reward)",
    )
    need(g.sft_coef >= 0, "grpo.sft_coef must be >= 0")
    need(g.vllm_sync_steps >= 1, f"grpo.vllm_sync_steps={g.vllm_sync_steps}: must be >= 1")
    need(0 < g.vllm_gpu_memory_utilization < 1, "grpo.vllm_gpu_memory_utilization must be in (0, 1)")
    need(g.vllm_max_model_len >= 16, f"grpo.vllm_max_model_len={g.vllm_max_model_len}: must be >= 16")
    need(
        0 <= g.filter_low <= g.filter_high <= 1,
        f"grpo.filter_low={g.filter_low}, grpo.filter_high={g.filter_high}: need 0 <= filter_low <= filter_high <= 1",
    )
    need(
        g.dynamic_sampling or (g.filter_low, g.filter_high) == (0.0, 1.0),
        "grpo.filter_low/filter_high act only with dynamic sampling: set grpo.dynamic_sampling=true",
    )
    need(
        not g.dynamic_sampling or g.max_resample_rounds >= 1,
        f"grpo.max_resample_rounds={g.max_resample_rounds}: dynamic sampling needs >= 1 resampling round per step",
    )
    need(
        not (g.dynamic_sampling and g.loss_type == "seed_report"),
        "grpo.dynamic_sampling=true has nothing to filter for loss_type=seed_report (its gradient is zero); "
        "choose another grpo.loss_type",
    )
    try:
        parse_perturbations(g.augment)
    except UserError as err:
        raise ConfigError(f"grpo.augment: {err}") from None
    need(0 <= g.augment_share <= 1, f"grpo.augment_share={g.augment_share}: must be in [0, 1]")
    need(
        not (g.augment and g.loss_type == "seed_report"),
        "grpo.augment has no rollouts to perturb for loss_type=seed_report; drop grpo.augment or choose another loss",
    )
    need(
        not (g.augment and g.generation_backend == "vllm"),
        "grpo.augment samples with transformers only; drop grpo.augment or set grpo.generation_backend=transformers",
    )
    for on, key in _FEATURE_KEYS:
        fix = f"set grpo.{on}=" + ("[NAME[:SEVERITY],...]" if on == "augment" else "true") + f" or drop grpo.{key}"
        need(
            bool(getattr(g, on)) or getattr(g, key) == getattr(GRPOConfig, key),
            f"grpo.{key} acts only with grpo.{on}: {fix}",
        )
    need(g.logprob_chunk_size >= 1, f"grpo.logprob_chunk_size={g.logprob_chunk_size}: must be >= 1 (e.g. 256)")
    need(g.vllm_is_cap >= 1, f"grpo.vllm_is_cap={g.vllm_is_cap}: must be >= 1 (1 clips every up-weighting)")
    need(t.max_steps >= 1, f"train.max_steps={t.max_steps}: must be >= 1")
    need(t.per_device_batch_size >= 1, "train.per_device_batch_size must be >= 1")
    need(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1")
    need(t.learning_rate >= 0, "train.learning_rate must be >= 0")
    need(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas: two values in [0, 1)")
    need(
        min(t.save_steps, t.eval_steps, t.warmup_steps) >= 0, "train.save_steps, eval_steps, warmup_steps must be >= 0"
    )
    need(t.logging_steps >= 1, "train.logging_steps must be >= 1")
    need(t.collective_timeout >= 1, f"train.collective_timeout={t.collective_timeout}: must be >= 1 (seconds)")
    need(
        not t.merge_lora or cfg.model.lora,
        "train.merge_lora=true needs model.lora=true (a full fine-tune has nothing to merge)",
    )
    need(
        t.save_steps % g.num_iterations == 0,
        f"train.save_steps={t.save_steps} must be a multiple of grpo.num_iterations={g.num_iterations} "
        "(a checkpoint inside a reused rollout could not resume exactly)",
    )

    for path in cfg.eval.metrics:
        if path in BENCHMARK_METRICS:
            continue
        need(
            is_import_path(path),
            f"eval.metrics: {path!r} is neither a metric ({', '.join(BENCHMARK_METRICS)}) nor an import path; "
            "write your own as package.module:function",
        )
        import_reward(path)
    metrics = (
        "vqa_accuracy",
        "composite",
        *(f"composite/{k}" for k in ("bleu1", "exact_match", "substring", "jaccard", "extractable")),
        "semantic",
        *BENCHMARK_METRICS,
        *(short_name(p) for p in cfg.eval.metrics if p not in BENCHMARK_METRICS),
    )
    need(
        t.eval_metric is None or t.eval_metric in metrics,
        f"train.eval_metric={t.eval_metric!r}: choose one of {', '.join(metrics)}, or null for the benchmark's",
    )
    find_benchmark(d.benchmark)  # an unknown name is one line
    need(0 <= d.eval_fraction < 1, f"data.eval_fraction={d.eval_fraction}: must be in [0, 1)")
    need(0 <= d.max_skip_fraction <= 1, "data.max_skip_fraction must be in [0, 1]")
    need(d.video_frames >= 1, f"data.video_frames={d.video_frames}: must be >= 1 (frames sampled from a video)")
    need(d.video_fps > 0, f"data.video_fps={d.video_fps}: must be > 0 (frames per second sampled from a video)")
    for key in ("max_train_samples", "max_eval_samples"):
        v = getattr(d, key)
        need(v is None or v >= 1, f"data.{key}={v}: must be >= 1 or null")
    need(d.cache_dir is None or bool(d.cache_dir.strip()), "data.cache_dir is empty; give a folder, none, or null")
    need(bool(d.split.strip()), "data.split is empty; name a split of the hf: dataset (e.g. train or validation)")
    for key in ("eval_split", "config_name", "preset"):
        v = getattr(d, key)
        need(v is None or bool(v.strip()), f"data.{key} is empty; give a name or null")
    complaint = check_preset_key(d.preset)
    need(complaint is None, complaint or "")
    complaint = check_template(d.prompt_template)
    need(complaint is None, complaint or "")
    need(
        t.log_completion_groups is None or t.log_completion_groups >= 0,
        f"train.log_completion_groups={t.log_completion_groups}: must be >= 0, or null for every group",
    )
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
    need(
        m.quantization == "none" or m.lora,
        f"model.quantization={m.quantization} needs model.lora=true (quantized weights stay frozen)",
    )
    need(e.batch_size >= 1, f"eval.batch_size={e.batch_size}: must be >= 1")
    need(
        e.max_new_tokens is None or e.max_new_tokens >= 1,
        f"eval.max_new_tokens={e.max_new_tokens}: must be >= 1, or null for the benchmark's",
    )
    need(e.temperature > 0, f"eval.temperature={e.temperature}: must be > 0")
    need(0 < e.top_p <= 1, f"eval.top_p={e.top_p}: must be in (0, 1]")
    need(e.bootstrap_samples >= 1, f"eval.bootstrap_samples={e.bootstrap_samples}: must be >= 1")
    need(e.max_examples is None or e.max_examples >= 1, f"eval.max_examples={e.max_examples}: must be >= 1 or null")
    try:
        parse_perturbations(e.perturb)
    except UserError as err:
        raise ConfigError(f"eval.perturb: {err}") from None

    # null components: the benchmark's metric, else composite (data/benchmarks.py), one reward
    comps = r.components if r.components is not None else ["composite"]
    python_rewards = set(python_rewards) | set(r.python_functions)  # the latter: refused where a run needs them
    lost = [n for n in r.python_functions if n not in comps]
    need(not lost, f"reward.python_functions: {lost[0] if lost else ''!r} is not in reward.components; drop it")
    known = all_keys()
    odd = [k for k in t.resume_allow if k not in known]
    need(
        not odd,
        f"train.resume_allow: {odd[0] if odd else ''!r} is not a config key; name keys as section.key "
        "(e.g. train.learning_rate)",
    )
    unknown = [c for c in comps if c not in REWARD_COMPONENTS and not is_import_path(c) and c not in python_rewards]
    need(
        not unknown,
        f"reward.components: unknown {unknown[0] if unknown else ''!r}; choose from "
        f"{', '.join(REWARD_COMPONENTS)}, or name your own function as package.module:function",
    )
    twice = next((c for i, c in enumerate(comps) if c in comps[:i]), None)
    need(
        twice is None, f"reward.components names {twice!r} twice; name each reward once (weigh it with reward.weights)"
    )
    # the name each reward logs and sums under: module:accuracy and other:accuracy would be one
    clash = next(((a, c) for i, c in enumerate(comps) for a in comps[:i] if short_name(a) == short_name(c)), None)
    if clash:
        raise ConfigError(
            f"reward.components: {clash[0]!r} and {clash[1]!r} both log as {short_name(clash[1])!r}; "
            "give each reward its own function name"
        )
    for c in comps:
        if is_import_path(c):
            import_reward(c)  # a typo in the path stops here, naming the module or attribute
    need(len(comps) >= 1, "reward.components: need at least one reward")
    if r.weights is not None:  # null: 1.0 each
        need(
            len(r.weights) == len(comps),
            f"reward.weights has {len(r.weights)} values for {len(comps)} reward.components; give one weight "
            "each, or null for 1.0 each",
        )
        need(all(w >= 0 for w in r.weights), f"reward.weights: weights must be >= 0, got {r.weights}")
    expected = {"bleu1", "exact_match", "substring", "jaccard", "extractable"}
    need(
        set(r.composite_weights) == expected,
        f"reward.composite_weights: give exactly the keys {', '.join(sorted(expected))}",
    )
    _check_weights(list(r.composite_weights.values()), "reward.composite_weights")


def _check_weights(weights: list[float], key: str) -> None:
    if any(w < 0 for w in weights):
        raise ConfigError(f"{key}: weights must be >= 0, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ConfigError(f"{key}: weights must sum to 1 (within 1e-6), got sum {sum(weights):.6g}")
