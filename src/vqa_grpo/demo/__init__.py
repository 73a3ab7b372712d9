"""``vqa-grpo demo``: GRPO from a shipped pretrained tiny base, beside the same-budget SFT baseline."""

from vqa_grpo.demo.run import format_summary, run_demo

__all__ = ["format_summary", "run_demo"]
