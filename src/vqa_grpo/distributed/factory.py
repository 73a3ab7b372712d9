"""The one way a run gets its :class:`~vqa_grpo.distributed.dist.Dist`: ``make_dist`` reads
the launch (launch.py) and returns the back-end it asks for, ``DDP`` (one process or accelerate's
DDP), ``FSDP2`` or ``DeepSpeed``."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from vqa_grpo.distributed.ddp import DDP
from vqa_grpo.distributed.deepspeed import DeepSpeed, require_deepspeed
from vqa_grpo.distributed.dist import Dist
from vqa_grpo.distributed.fsdp import FSDP2
from vqa_grpo.distributed.launch import launch_deepspeed, launch_fsdp, launched_world_size
from vqa_grpo.errors import UserError


def make_dist(device: str = "auto", timeout_s: float = 600) -> Dist:
    """accelerate's processes when a launcher started several (gloo on the CPU), else one process.
    ``timeout_s``: how long a collective waits for a rank that hangs (train.collective_timeout).

    An FSDP or DeepSpeed launch is read here and accelerate is then started as a plain
    multi-process run (ACCELERATE_USE_FSDP/DEEPSPEED=false for this process): the back-end
    shards the model itself.
    """
    if launched_world_size() <= 1:
        return DDP()
    ds = launch_deepspeed()
    if ds is not None:
        require_deepspeed()
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
    fsdp = launch_fsdp()
    if fsdp is not None:
        os.environ["ACCELERATE_USE_FSDP"] = "false"

    acc = Accelerator(
        cpu=device == "cpu" or not torch.cuda.is_available(),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))],
    )
    if acc.distributed_type.name in ("FSDP", "DEEPSPEED"):  # set up by code rather than the launcher
        raise UserError(
            f"accelerate's own {acc.distributed_type.name} is not supported by vqa-grpo's loop; "
            "launch with configs/accelerate/fsdp.yaml or ddp.yaml"
        )
    if ds is not None:
        return DeepSpeed(ds, acc)
    if fsdp is not None:
        return FSDP2(fsdp, acc)
    return DDP(acc)
