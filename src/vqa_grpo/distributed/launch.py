"""The launch environment of a run: how many processes, and the FSDP / DeepSpeed settings that
accelerate's launcher exports (``FSDP_*``, ``ACCELERATE_DEEPSPEED_*``), read once (factory.py)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Mapping

from vqa_grpo.errors import UserError


def launched_world_size() -> int:
    """Processes started by a launcher (accelerate launch, torchrun): WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _flag(env: Mapping[str, str], name: str, default: str = "false") -> bool:
    return env.get(name, default).strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class FSDPSettings:
    """The FSDP settings of the launch (accelerate exports its config's fsdp_config as ``FSDP_*``)."""

    wrap_classes: tuple[str, ...]  # module class names sharded as their own unit; () = the model's _no_split_modules
    wrap_layers: bool  # False (fsdp_auto_wrap_policy: NO_WRAP): the whole model is one unit
    reshard_after_forward: bool  # free the gathered weights after each unit's forward (gather again in backward)
    offload_params: bool  # keep the shards (and AdamW's moments) in CPU memory: CPUOffloadPolicy

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "FSDPSettings | None":
        """The settings when the launch asks for FSDP (ACCELERATE_USE_FSDP), else None; a setting this
        loop does not honour is a UserError naming the fix."""
        if not _flag(env, "ACCELERATE_USE_FSDP"):
            return None
        fix = "in the accelerate config's fsdp_config (configs/accelerate/fsdp.yaml)"
        if env.get("FSDP_VERSION", "1").strip() != "2":
            raise UserError(
                f"fsdp_version={env.get('FSDP_VERSION', '1')}: vqa-grpo shards with FSDP2; set fsdp_version: 2 {fix}"
            )
        policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").strip().upper()
        if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
            raise UserError(
                f"fsdp_auto_wrap_policy={policy} is not supported; set fsdp_auto_wrap_policy: "
                f"TRANSFORMER_BASED_WRAP (one unit per layer class) {fix}"
            )
        kind = env.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT").strip().upper()
        if kind != "FULL_STATE_DICT":
            raise UserError(
                f"fsdp_state_dict_type={kind} is not supported (checkpoints are gathered into the "
                f"files of a 1-process run); set fsdp_state_dict_type: FULL_STATE_DICT {fix}"
            )
        refused = {
            "FSDP_ACTIVATION_CHECKPOINTING": "set fsdp_activation_checkpointing: false and "
            "model.gradient_checkpointing=true in the run's config",
            "FSDP_CPU_RAM_EFFICIENT_LOADING": f"set fsdp_cpu_ram_efficient_loading: false {fix} (every process loads "
            "the weights, then shards them)",
            "FSDP_FORWARD_PREFETCH": f"set fsdp_forward_prefetch: false {fix}",
        }
        for name, advice in refused.items():
            if _flag(env, name):
                raise UserError(
                    f"{name.lower().removeprefix('fsdp_')}=true is not supported under vqa-grpo's FSDP2; {advice}"
                )
        precision = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
        if precision != "no":
            raise UserError(
                f"accelerate mixed_precision={precision} is not applied under vqa-grpo's FSDP2; set "
                'mixed_precision: "no" in the accelerate config and train.mixed_precision=bf16 in the run\'s config'
            )
        classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
        return cls(
            classes,
            policy == "TRANSFORMER_BASED_WRAP",
            _flag(env, "FSDP_RESHARD_AFTER_FORWARD", "true"),
            _flag(env, "FSDP_OFFLOAD_PARAMS"),
        )


@dataclass(frozen=True)
class DeepSpeedSettings:
    """The DeepSpeed settings of the launch (accelerate exports its config's deepspeed_config as
    ``ACCELERATE_DEEPSPEED_*`` and ``ACCELERATE_GRADIENT_*``)."""

    stage: int  # ZeRO stage: 2 (gradients and AdamW's moments partitioned) or 3 (the weights as well)
    accumulation: int | None  # gradient_accumulation_steps, when the accelerate config names it
    clipping: float | None  # gradient_clipping, when the accelerate config names it

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DeepSpeedSettings | None":
        """The settings when the launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED), else None; a
        setting this loop does not honour is a UserError naming the fix."""
        if not _flag(env, "ACCELERATE_USE_DEEPSPEED"):
            return None
        fix = "in the accelerate config's deepspeed_config (configs/accelerate/deepspeed_zero3.yaml)"
        if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip():
            raise UserError(
                "deepspeed_config_file is not supported (vqa-grpo builds DeepSpeed's config from the run's "
                f"train.* settings); remove it and set zero_stage {fix}"
            )
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2").strip()
        if stage not in ("2", "3"):
            raise UserError(f"zero_stage={stage} is not supported; set zero_stage: 2 or 3 {fix}")
        for where in ("OPTIMIZER", "PARAM"):
            device = env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{where}_DEVICE", "none").strip().lower()
            if device not in ("", "none"):
                raise UserError(
                    f"offload_{where.lower()}_device={device} is not supported under vqa-grpo's DeepSpeed; set "
                    f"offload_{where.lower()}_device: none {fix}, or use configs/accelerate/fsdp.yaml with "
                    "fsdp_offload_params: true"
                )
        if _flag(env, "ACCELERATE_DEEPSPEED_ZERO3_INIT"):
            raise UserError(
                f"zero3_init_flag=true is not supported (every process loads the weights, then ZeRO-3 "
                f"partitions them); set zero3_init_flag: false {fix}"
            )
        if env.get("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", "").strip():
            raise UserError(f"deepspeed_moe_layer_cls_names is not supported; remove it {fix}")
        precision = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
        if precision != "no":
            raise UserError(
                f"accelerate mixed_precision={precision} is not applied under vqa-grpo's DeepSpeed; set "
                'mixed_precision: "no" in the accelerate config and train.mixed_precision=bf16 in the run\'s config'
            )
        accumulation = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip()
        clipping = env.get("ACCELERATE_GRADIENT_CLIPPING", "").strip().lower()
        return cls(
            int(stage),
            int(accumulation) if accumulation else None,
            float(clipping) if clipping not in ("", "none", "auto") else None,
        )

    def config(self, train=None) -> dict:
        """DeepSpeed's config for a model trained with ``train`` (config.TrainConfig; None: a model
        that only runs forward). Every ZeRO-3 parameter is partitioned, however small."""
        return {
            "train_micro_batch_size_per_gpu": train.per_device_batch_size if train else 1,
            "gradient_accumulation_steps": train.gradient_accumulation_steps if train else 1,
            "gradient_clipping": train.max_grad_norm if train else 0.0,
            "zero_optimization": {"stage": self.stage, "stage3_param_persistence_threshold": 0},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**62,
        }


@functools.cache
def launch_deepspeed() -> DeepSpeedSettings | None:
    """This process's DeepSpeed launch settings, read once (make_dist then hides them from accelerate)."""
    return DeepSpeedSettings.from_env(os.environ)


@functools.cache
def launch_fsdp() -> FSDPSettings | None:
    """This process's launch settings, read once: make_dist then hides them from accelerate
    (a second Dist in the same process, e.g. evaluation after training, must see them too)."""
    return FSDPSettings.from_env(os.environ)
