"""What the model tests share besides fixtures (conftest.py): where the hub's Phi-3-vision files
are, and the ModelConfig a tiny model directory is loaded with."""

from __future__ import annotations

import json
from pathlib import Path

from vqa_grpo.config import ModelConfig

# The hub's files of microsoft/Phi-3-vision-128k-instruct without the weights, beside the repository.
PHI3_V_HUB = Path(__file__).resolve().parents[3] / "shared" / "models" / "phi-3-vision-128k-instruct"


def model_config(path, **kw) -> ModelConfig:
    """ModelConfig for a tiny model directory; Phi-3-vision's at num_crops 1 unless given (the
    download's preprocessor_config.json says 16: 2,509 image tokens for a square image, not 313)."""
    if json.loads((Path(path) / "config.json").read_text()).get("model_type") == "phi3_v":
        kw.setdefault("num_crops", 1)
    return ModelConfig(name_or_path=str(path), **kw)
