"""The processes of a run and the back-end that holds the model: ``Dist`` (dist.py) over one small
protocol (backend.py) with one module per back-end (ddp.py, fsdp.py, deepspeed.py); the launch
environment is read by launch.py. Sharded prediction lives with evaluation (evaluation/sharded.py)."""

from vqa_grpo.training.distributed.dist import Dist
from vqa_grpo.training.distributed.helpers import wrap_targets
from vqa_grpo.training.distributed.launch import DeepSpeedSettings, FSDPSettings

__all__ = ["DeepSpeedSettings", "Dist", "FSDPSettings", "wrap_targets"]
