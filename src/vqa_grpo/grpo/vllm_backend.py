"""Sampling the G completions with vLLM (``grpo.generation_backend=vllm``), colocated in each process.

vLLM holds its own copy of the policy on the same device. Every ``grpo.vllm_sync_steps`` optimiser
steps the trainer's weights are pushed into it (LoRA adapters merged into the copy); in between vLLM samples from
a policy up to k-1 steps old. Its per-token log-probs come back with the samples, and the loss
corrects for the gap between the sampling engine and the trainer's rollout policy pi_old with
truncated importance sampling (Yao et al., 2025, "Your efficient RL framework secretly brings you
off-policy RL training"): each token's surrogate is weighted by

    w_it = min(pi_old(o_it | ...) / pi_vllm(o_it | ...), grpo.vllm_is_cap)

(detached). Both log-probs are the models' raw ones (vLLM's ``raw_logprobs``: before temperature,
top-p and the suppressed image tokens; the trainer's at temperature 1), so that w is exactly 1
when the two engines hold the same weights and compute alike, whatever the sampling settings;
the samples themselves are drawn with each row's temperature and top-p, as on the transformers
path. A question's images go to vLLM as multi-modal data (``multi_modal_data``: one image, or
its list in prompt order) with the family's prompt text, which places them; the loss re-encodes
them with the family's processor. The engine reserves room for the most images a question of
the run's data holds (``mm_limits``). Videos are refused with vLLM (``check_run``): its video
processors sample and time the frames their own way, and the trainer's pass would not see the
clip the sampler saw.

The same code drives vLLM's CUDA build and its CPU build (``vllm-cpu``, scripts/setup_vllm_cpu.sh),
where ``grpo.vllm_gpu_memory_utilization`` is vLLM's share of the host's memory instead (or set
VLLM_CPU_KVCACHE_SPACE, in GiB, for an explicit KV cache). vLLM's CPU worker replaces
``torch.set_num_threads`` in the process with a no-op once it has bound its threads.

Shapes: B questions, G completions each, R = B*G rows (group after group), C completion tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vqa_grpo.config import Config
from vqa_grpo.errors import UserError

INSTALL_HINT = (
    "grpo.generation_backend=vllm needs vLLM: pip install 'vqa-grpo[vllm]' on a CUDA machine "
    "(scripts/setup_vllm_cpu.sh for its CPU build), or set grpo.generation_backend=transformers"
)


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return vllm


@dataclass
class Samples:
    """vLLM's completions, right-padded: ids and mask [R, C], truncated [R], raw log-probs [R, C]."""

    ids: torch.Tensor
    mask: torch.Tensor
    truncated: torch.Tensor
    logprobs: torch.Tensor


class VLLMSampler:
    """A colocated vLLM engine for one training process, and the weight pushes into it."""

    def __init__(
        self,
        cfg: Config,
        rank: int = 0,
        world: int = 1,
        limits: dict[str, int] | None = None,
        processor_kwargs: dict | None = None,
    ):
        """``limits``: vLLM's limit_mm_per_prompt (``mm_limits`` of the run's data; default one image).
        ``processor_kwargs``: vLLM's mm_processor_kwargs, for its processor to show images as the
        trainer's does (the family adapter's ``vllm_processor_kwargs``: Phi-3's model.num_crops,
        Gemma 3's pan-and-scan settings); None: the checkpoint's processor as vLLM loads it."""
        vllm = require_vllm()
        # The engine core must live in this process for its weights to be reachable (and, under a
        # launcher, each rank runs its own engine over the already initialised process group).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.cfg = cfg
        self.llm = vllm.LLM(
            model=cfg.model.name_or_path,
            dtype={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[cfg.model.dtype],
            gpu_memory_utilization=cfg.grpo.vllm_gpu_memory_utilization,
            enable_prefix_caching=True,  # the G copies of a prompt share its KV blocks
            limit_mm_per_prompt=limits or {"image": 1},
            seed=cfg.train.seed + rank,
            trust_remote_code=cfg.model.trust_remote_code,
            logprobs_mode="raw_logprobs",  # the model's own, before temperature, top-p and logit bias
            max_model_len=cfg.grpo.vllm_max_model_len,
            mm_processor_kwargs=processor_kwargs,
            distributed_executor_backend="external_launcher" if world > 1 else None,
        )
        self.vllm = vllm
        self.cpu = vllm.platforms.current_platform.is_cpu()

    def push_weights(self, model) -> None:
        """Copy the policy's current weights into vLLM's model (LoRA adapters merged into the copy).

        The weights go by their transformers names to vLLM's in-place reload (the worker's
        ``reload_weights``, in this process): the model's own ``load_weights`` maps the names
        (an unknown one raises) and each layer's weights are processed again as after a load
        (vLLM's CPU build repacks its linear layers' weights for its GEMM kernels and drops the
        originals, so a plain ``load_weights`` cannot take a second load there). On CPU only, the
        LM head is repacked as well: tied to the input embeddings it receives no weights of its
        own, and vLLM 0.32's reload keeps its packed copy of the old ones. Then the caches that
        hold results of the old weights are emptied on both sides of the engine (scheduler and
        worker): the vision encoder's outputs and the prefix's KV blocks; and the multi-modal
        input caches, which the reload clears on the worker's side only."""
        model = getattr(model, "module", model)
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": trainer_weights(model), "is_checkpoint_format": True}
        )
        if self.cpu:
            self.llm.apply_model(repack_lm_heads)
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()

    def sample(
        self,
        prompt_texts: list[str],
        visuals: list,
        group_size: int,
        temperatures: torch.Tensor,
        top_ps: torch.Tensor,
        max_tokens: int,
        stop_ids: list[int],
        suppressed_ids: list[int],
    ) -> Samples:
        """G completions of each prompt (row r: prompt r // G at temperatures[r], top_ps[r]);
        ``visuals[b]``: prompt b's one image or its list of images, as its text places them."""
        requests, params = [], []
        for b, (text, shown) in enumerate(zip(prompt_texts, visuals)):
            data = multi_modal_data(shown)
            for g in range(group_size):
                r = b * group_size + g
                requests.append({"prompt": text, "multi_modal_data": data} if data else {"prompt": text})
                params.append(
                    self.vllm.SamplingParams(
                        n=1,
                        temperature=float(temperatures[r]),
                        top_p=float(top_ps[r]),
                        top_k=-1,
                        max_tokens=max_tokens,
                        logprobs=0,
                        stop_token_ids=stop_ids,
                        skip_special_tokens=False,
                        logit_bias={i: -100.0 for i in suppressed_ids} or None,
                    )
                )
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        return collate([o.outputs[0] for o in outputs], max_tokens)


def multi_modal_data(visuals) -> dict:
    """One prompt's visuals (an image, or a list of images) as vLLM's multi_modal_data: {"image":
    the image} for one, {"image": [...]} in prompt order for several, {} for a text-only prompt (a
    run with videos is refused before: ``check_run``)."""
    if isinstance(visuals, Image.Image):
        return {"image": visuals}
    if not visuals:
        return {}
    return {"image": visuals[0] if len(visuals) == 1 else list(visuals)}


def mm_limits(max_images: int) -> dict[str, int]:
    """vLLM's limit_mm_per_prompt for data whose questions hold up to ``max_images`` images (at
    least one, the engine's profile of a prompt's images)."""
    return {"image": max(1, max_images)}


def check_device(device: torch.device) -> None:
    """The installed vLLM build runs on ``device``'s type (its CUDA build on cuda, vllm-cpu on cpu), else one line."""
    from vllm.platforms import current_platform

    if current_platform.device_type != device.type:
        raise UserError(
            f"grpo.generation_backend=vllm: the installed vLLM runs on {current_platform.device_type}, "
            f"this run is on {device.type}; set train.device={current_platform.device_type} "
            "or grpo.generation_backend=transformers"
        )


def trainer_weights(model):
    """(transformers name, tensor) of each weight of the policy, detached; with LoRA, each adapted
    layer's base weight plus its active adapters' W_delta = scale * B @ A (computed apart: the
    trainer's weights are never merged in place) under the base model's names, and no adapter tensors."""
    deltas = {}
    if hasattr(model, "peft_config"):
        from peft.tuners.lora import LoraLayer

        for prefix, layer in model.named_modules():
            if isinstance(layer, LoraLayer) and not layer.disable_adapters and not layer.merged:
                for name in layer.active_adapters:
                    if name in layer.lora_A:
                        key = f"{prefix}.base_layer.weight"
                        deltas[key] = deltas.get(key, 0) + layer.get_delta_weight(name).detach()
    for name, param in model.named_parameters():
        if "lora_" in name or "original_module" in name:
            continue
        weight = param.detach()
        if name in deltas:
            weight = weight + deltas[name].to(weight.dtype)
        yield name.removeprefix("base_model.model.").replace(".base_layer", ""), weight


def repack_lm_heads(model) -> None:
    """Runs on vLLM's model (CPU build): rebuild each LM head's packed GEMM weights from its weight."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for layer in model.modules():
        if isinstance(layer, ParallelLMHead) and layer.weight.numel():
            layer.quant_method.process_weights_after_loading(layer)


def collate(completions, max_tokens: int) -> Samples:
    """vLLM's completion outputs as right-padded tensors (pad id 0 under a zero mask)."""
    R = len(completions)
    C = max(1, max(len(c.token_ids) for c in completions))
    ids = torch.zeros(R, C, dtype=torch.long)
    mask = torch.zeros(R, C, dtype=torch.long)
    logprobs = torch.zeros(R, C)
    truncated = torch.zeros(R, dtype=torch.bool)
    for r, c in enumerate(completions):
        n = len(c.token_ids)
        ids[r, :n] = torch.as_tensor(list(c.token_ids), dtype=torch.long)
        mask[r, :n] = 1
        logprobs[r, :n] = torch.as_tensor([step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids)])
        truncated[r] = c.finish_reason == "length"  # hit max_tokens without a stop token
    return Samples(ids, mask, truncated, logprobs)


def truncated_is_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """w = min(exp(log pi_old - log pi_sampler), cap) on completion tokens, 0 elsewhere; [R, C], no grad.

    Both log-probs must be taken the same way (here: raw, temperature 1)."""
    w = torch.exp((old_logprobs - sampler_logprobs).detach()).clamp(max=cap)
    return w * mask


def check_run(cfg: Config, device: torch.device, videos: int = 0) -> None:
    """vLLM installed for this device (its CUDA build, or vllm-cpu), weights vLLM can load and take
    pushes into, and data without videos (``videos``: the questions with one), before anything is written."""
    if videos:
        raise UserError(
            f"grpo.generation_backend=vllm does not sample on videos, and {videos} question(s) of the data have one; "
            "set grpo.generation_backend=transformers, or leave the videos out"
        )
    require_vllm()
    check_device(device)
    if cfg.model.quantization != "none":
        raise UserError(
            f"grpo.generation_backend=vllm cannot take pushes of {cfg.model.quantization} weights; "
            "set model.quantization=none or grpo.generation_backend=transformers"
        )
    if (Path(cfg.model.name_or_path) / "adapter_config.json").is_file():
        raise UserError(
            f"{cfg.model.name_or_path} is a LoRA adapter, which vLLM cannot load as a model; "
            "merge it first (vqa-grpo merge) or set grpo.generation_backend=transformers"
        )
