"""The processor keyword arguments vLLM is started with (``mm_processor_kwargs``), from the family
adapter (``vllm_processor_kwargs``): vLLM loads the checkpoint's processor itself, and must show
images as the trainer's processor does. Main venv (transformers 5.24, no vllm); the real engine
on the tiny Gemma 3 with pan-and-scan is tests/grpo/test_vllm_gemma3_real.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import vqa_grpo.training.session as session
from vqa_grpo.config import Config, GRPOConfig, ModelConfig
from vqa_grpo.models.adapters import adapter_for
from vqa_grpo.models.tiny_families import build_tiny_gemma3


@pytest.fixture(scope="module")
def gemma3_processors(tmp_path_factory):
    """The tiny Gemma 3's processor as a run loads it, saved with pan-and-scan on and off."""
    adapter, out = adapter_for("gemma3"), {}
    for on in (True, False):
        path = build_tiny_gemma3(tmp_path_factory.mktemp(f"gemma3_pan_and_scan_{on}") / "model", pan_and_scan=on)
        out[on] = adapter.load_processor(str(path), ModelConfig(name_or_path=str(path)))
    return out


def test_gemma3_gives_vllm_its_active_pan_and_scan_settings(gemma3_processors):
    adapter = adapter_for("gemma3")
    on = adapter.vllm_processor_kwargs(gemma3_processors[True], ModelConfig())
    assert on == {
        "do_pan_and_scan": True,
        "pan_and_scan_min_crop_size": 8,  # the checkpoint's (the processor's default is 256)
        "pan_and_scan_max_num_crops": 4,
        "pan_and_scan_min_ratio_to_activate": 1.2,  # the processor's default: the checkpoint leaves it unset
    }
    # Off (the checkpoint does not turn it on): vLLM's default, the same, so nothing is passed.
    assert adapter.vllm_processor_kwargs(gemma3_processors[False], ModelConfig()) is None
    # A processor without per-processor call defaults (transformers 5.19) passes the class's, pan-and-scan off.
    plain = type("Processor", (), {"image_processor": gemma3_processors[True].image_processor})()
    assert adapter.vllm_processor_kwargs(plain, ModelConfig()) is None


def test_phi3_v_gives_vllm_model_num_crops():
    adapter = adapter_for("phi3_v")
    assert adapter.vllm_processor_kwargs(None, ModelConfig(num_crops=4)) == {"num_crops": 4}
    assert adapter.vllm_processor_kwargs(None, ModelConfig()) is None  # the checkpoint's, as vLLM loads it


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3", "generic"])
def test_other_families_leave_vllms_processor_as_loaded(family):
    assert adapter_for(family).vllm_processor_kwargs(None, ModelConfig()) is None


def test_the_session_starts_vllm_with_the_adapters_kwargs(monkeypatch):
    """start_session gives VLLMSampler the adapter's kwargs for the loaded processor and model config
    (the optimizer, data order and sampler stood in for: the engine's own start is stopped)."""

    class Started(Exception):
        pass

    def sampler(cfg, rank, world, limits, processor_kwargs):
        seen.update(limits=limits, processor_kwargs=processor_kwargs)
        raise Started

    seen: dict = {}
    monkeypatch.setattr(session, "VLLMSampler", sampler)
    for name in ("make_optimizer", "make_scheduler", "prompt_guard", "Batches"):
        monkeypatch.setattr(session, name, lambda *a: None)
    monkeypatch.setattr(session, "check_images", lambda train, lm: train)
    cfg = Config(model=ModelConfig(num_crops=2), grpo=GRPOConfig(generation_backend="vllm"))
    lm = SimpleNamespace(adapter=adapter_for("phi3_v"), processor=None, model=SimpleNamespace(parameters=list))
    with pytest.raises(Started):
        session.start_session(cfg, "grpo", lm, SimpleNamespace(rank=0, world=1), "cpu", [], None)
    assert seen == {"limits": {"image": 1}, "processor_kwargs": {"num_crops": 2}}
