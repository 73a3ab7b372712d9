"""The tiny model of each family, built once per session for the shared-prefix and static-decode tests;
and the tiny Phi-3-vision laid out as the hub's download is."""

from __future__ import annotations

import pytest
from family_models import PHI3_V_HUB

from vqa_grpo.models.tiny import build_tiny


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_model_dir):
    """Tiny model directories by family (Qwen2-VL: the session's; others built once, on first use).
    Phi-3-vision's is built from the hub's own files (``phi3_v_download``) where ../shared has them."""
    built = {"qwen2_vl": tiny_model_dir}

    def get(family):
        if family not in built:
            out = tmp_path_factory.mktemp(family) / "model"
            if family == "phi3_v" and PHI3_V_HUB.is_dir():
                from vqa_grpo.models.phi3_v.tiny import build_tiny_phi3_v_like

                built[family] = build_tiny_phi3_v_like(PHI3_V_HUB, out, seed=0)
            else:
                built[family] = build_tiny(family, out, seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def phi3_v_download(family_dirs):
    """A tiny random Phi-3-vision laid out as the download is (read-only: copy it before changing it):
    the hub's config.json with only the sizes shrunk (``_attn_implementation`` flash_attention_2 and
    ``torch_dtype`` bfloat16 as published), its tokenizer and preprocessor files (num_crops 16) byte
    for byte, bf16 weights in the official names and shards."""
    if not PHI3_V_HUB.is_dir():
        pytest.skip("../shared/models/phi-3-vision-128k-instruct is absent")
    return family_dirs("phi3_v")
