"""The tiny model of each family, built once per session for the shared-prefix and static-decode tests;
and the tiny Phi-3-vision laid out as the hub's download is."""

from __future__ import annotations

from pathlib import Path

import pytest

from vqa_grpo.models.tiny import build_tiny

# The hub's files of microsoft/Phi-3-vision-128k-instruct without the weights, beside the repository.
PHI3_V_HUB = Path(__file__).resolve().parents[3] / "shared" / "models" / "phi-3-vision-128k-instruct"


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_model_dir):
    """Tiny model directories by family (Qwen2-VL: the session's; others built once, on first use)."""
    built = {"qwen2_vl": tiny_model_dir}

    def get(family):
        if family not in built:
            built[family] = build_tiny(family, tmp_path_factory.mktemp(family) / "model", seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def phi3_v_download(tmp_path_factory):
    """A tiny random Phi-3-vision laid out as the download is (read-only: copy it before changing it):
    the hub's config.json with only the sizes shrunk (``_attn_implementation`` flash_attention_2 and
    ``torch_dtype`` bfloat16 as published), its tokenizer and preprocessor files byte for byte, bf16
    weights in the official names and shards."""
    if not PHI3_V_HUB.is_dir():
        pytest.skip("../shared/models/phi-3-vision-128k-instruct is absent")
    from vqa_grpo.models.phi3_v.tiny import build_tiny_phi3_v_like

    return build_tiny_phi3_v_like(PHI3_V_HUB, tmp_path_factory.mktemp("phi3_v_download") / "model", seed=0)
