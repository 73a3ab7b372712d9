"""Does vLLM's own Phi3VForCausalLM load a checkpoint the native Phi-3-vision saved, and decode alike?

  .venv/bin/python scripts/phi3_v_vllm_check.py build DIR        # main venv: native checkpoint + native.json
  OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python scripts/phi3_v_vllm_check.py vllm DIR

``build``: the native model with the real 24-layer CLIP ViT-L/14-336 and the reduced text model of
tests/models/phi3_v_reference_inputs.py (deterministic weights, fp32, eager) is saved to DIR with
its processor (num_crops 4); the official remote-code files (``--remote``, default /tmp/ref/phi3v)
are copied beside them as on the hub; the native greedy 8 new tokens on PROMPT with
make_image(200, 120) and their raw log-probs go to DIR/native.json.
``vllm``: vllm.LLM (CPU build, fp32, eager) loads DIR with trust_remote_code and generates greedily
(8 tokens, logprobs=1, raw); the tokens and log-probs are compared with native.json.
vLLM runs its own Phi3VForCausalLM (CLIP fixed at ViT-L/14-336, so no tiny towers) but needs the
remote configuration_phi3_v.py (model_type phi3_v) and processing/image_processing_phi3_v.py (its
HF processor); mm_processor_kwargs num_crops overrides preprocessor_config.json's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "models"))

import phi3_v_reference_inputs as R  # noqa: E402

NEW, NUM_CROPS, IMAGE = 8, 4, (200, 120)
REMOTE_FILES = (
    "configuration_phi3_v.py",
    "modeling_phi3_v.py",
    "image_embedding_phi3_v.py",
    "processing_phi3_v.py",
    "image_processing_phi3_v.py",
)


def build(out: Path, remote: Path) -> None:
    import torch

    from vqa_grpo.models.phi3_v import Phi3VConfig, Phi3VForCausalLM
    from vqa_grpo.models.phi3_v.processing import Phi3VProcessor

    torch.set_num_threads(1)
    cfg = R.reference_config()
    cfg.pop("_attn_implementation", None)
    config = Phi3VConfig(**cfg)
    config._attn_implementation = "eager"
    model = Phi3VForCausalLM(config).eval()
    model.load_state_dict(R.fill_weights(dict(model.state_dict())), strict=True)
    proc = Phi3VProcessor.from_pretrained(R.SHARED, num_crops=NUM_CROPS)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    for name in REMOTE_FILES:
        shutil.copy(remote / name, out / name)
    enc = proc(R.PROMPT, [R.make_image(*IMAGE)])
    with torch.no_grad():
        gen = model.generate(
            **enc,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    P = enc["input_ids"].shape[1]
    tokens = gen.sequences[0, P:].tolist()
    logp = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(gen.logits, tokens)]
    info = {
        "tokens": tokens,
        "logprobs": logp,
        "prompt_len": P,
        "image_tokens": int((enc["input_ids"] < 0).sum()),
        "attn": "eager",
        "dtype": "float32",
    }
    (out / "native.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"saved {out}: {sum(p.numel() for p in model.parameters())} params; native: {info}")


def run_vllm(out: Path) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(out),
        trust_remote_code=True,
        dtype="float32",
        max_model_len=2048,
        enforce_eager=True,
        logprobs_mode="raw_logprobs",
        limit_mm_per_prompt={"image": 1},
        mm_processor_kwargs={"num_crops": NUM_CROPS},
        seed=0,
    )
    sp = SamplingParams(temperature=0, max_tokens=NEW, min_tokens=NEW, logprobs=1)
    res = llm.generate([{"prompt": R.PROMPT, "multi_modal_data": {"image": R.make_image(*IMAGE)}}], sp)[0]
    o = res.outputs[0]
    tokens = list(o.token_ids)
    logp = [lp[t].logprob for lp, t in zip(o.logprobs, tokens)]
    native = json.loads((out / "native.json").read_text())
    print(f"vLLM prompt tokens: {len(res.prompt_token_ids)} (native {native['prompt_len']})")
    print(f"native tokens: {native['tokens']}\nvLLM   tokens: {tokens}\ntokens equal: {tokens == native['tokens']}")
    diffs = [abs(a - b) for a, b in zip(logp, native["logprobs"])]
    print(f"native logprobs: {[round(x, 6) for x in native['logprobs']]}")
    print(f"vLLM   logprobs: {[round(x, 6) for x in logp]}")
    print(f"max |logprob diff| over {len(diffs)} tokens: {max(diffs):.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["build", "vllm"])
    p.add_argument("dir", type=Path)
    p.add_argument("--remote", type=Path, default=Path("/tmp/ref/phi3v"), help="the official remote-code .py files")
    a = p.parse_args()
    if a.mode == "build":
        build(a.dir, a.remote)
    else:
        run_vllm(a.dir)


if __name__ == "__main__":
    main()
