"""The processes of a run and the back-end that holds the model: the base class ``Dist`` (dist.py:
rank, world size, collectives) with one subclass per back-end (ddp.py, fsdp.py, deepspeed.py),
returned by ``make_dist`` (factory.py) from the launch environment that launch.py reads. Sharded
prediction lives with evaluation (evaluation/sharded.py)."""

from vqa_grpo.distributed.ddp import DDP
from vqa_grpo.distributed.deepspeed import DeepSpeed
from vqa_grpo.distributed.dist import Dist
from vqa_grpo.distributed.factory import make_dist
from vqa_grpo.distributed.fsdp import FSDP2
from vqa_grpo.distributed.helpers import wrap_targets
from vqa_grpo.distributed.launch import DeepSpeedSettings, FSDPSettings

__all__ = ["DDP", "DeepSpeed", "DeepSpeedSettings", "Dist", "FSDP2", "FSDPSettings", "make_dist", "wrap_targets"]
