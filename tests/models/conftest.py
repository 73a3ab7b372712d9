"""The tiny model of each family, built once per session for the shared-prefix and static-decode tests."""

from __future__ import annotations

import pytest

from vqa_grpo.models.tiny import build_tiny


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_model_dir):
    """Tiny model directories by family (Qwen2-VL: the session's; others built once, on first use)."""
    built = {"qwen2_vl": tiny_model_dir}

    def get(family):
        if family not in built:
            built[family] = build_tiny(family, tmp_path_factory.mktemp(family) / "model", seed=0)
        return built[family]

    return get
