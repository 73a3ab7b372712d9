"""GPU memory a GRPO run needs, per GPU, for Phi-3-vision and Qwen2.5-VL-7B: computed, not measured.

    python benchmarks/memory_estimate.py [--gpus 8] [--json]

The counts come from the models' published configs (parameters, layers, key/value heads, head
size). What is counted, per GPU, in GiB:

- weights: bf16, 2 bytes a parameter (4-bit QLoRA: about 0.55, with quantisation constants);
- gradients: bf16, 2 bytes a trained parameter;
- AdamW: two moments kept in the weights' dtype by torch, 4 bytes a trained parameter;
- the KL reference: a frozen bf16 copy in full fine-tuning when grpo.beta > 0 (none with LoRA:
  the adapters are switched off instead);
- the sampling KV cache of one step: layers x 2 x kv_heads x head_dim x 2 bytes a token, for
  B questions of P prompt tokens and G completions of C tokens, once with the shared prefix
  (P + G*C a question) and G times without it (G*(P + C)).

DDP keeps everything on every GPU; ZeRO-2 splits gradients and AdamW over the GPUs; ZeRO-3 and
FSDP split weights too. Activations of the training forward pass are left out (they depend on
gradient checkpointing and the number of image tokens); leave 20-30% of the card for them and for
the allocator.
"""

from __future__ import annotations

import argparse
import json

GIB = 1024**3

# Published configs: total parameters; language model layers, key/value heads, head size; prompt tokens
# of one 336-px-crop image question (Phi-3-vision: num_crops=16 gives up to 16 x 144 + 144 image tokens;
# Qwen2.5-VL-7B: a 448 x 448 image gives 256 tokens after merging, plus the text).
MODELS = {
    "Phi-3-vision-128k-instruct (4.2B)": dict(params=4.15e9, layers=32, kv_heads=32, head_dim=96, prompt=2500),
    "Qwen2.5-VL-7B-Instruct (8.3B)": dict(params=8.29e9, layers=28, kv_heads=4, head_dim=128, prompt=300),
}
LORA_FRACTION = 0.01  # r = 16 on the attention and MLP projections: about 1% of the parameters


def per_gpu(m: dict, setting: str, gpus: int, beta: bool, B: int, G: int, C: int, shared: bool) -> dict[str, float]:
    p = m["params"]
    lora = setting.startswith(("lora", "qlora"))
    trained = p * LORA_FRACTION if lora else p
    weights = p * (0.55 if setting.startswith("qlora") else 2.0)
    grads, adam = 2.0 * trained, 4.0 * trained
    ref = 2.0 * p if beta and not lora else 0.0
    if setting.endswith("zero2"):
        grads, adam = grads / gpus, adam / gpus
    elif setting.endswith(("zero3", "fsdp")):
        weights, grads, adam, ref = weights / gpus, grads / gpus, adam / gpus, ref / gpus
    per_token = m["layers"] * 2 * m["kv_heads"] * m["head_dim"] * 2
    tokens = B * (m["prompt"] + G * C) if shared else B * G * (m["prompt"] + C)
    out = {"weights": weights, "grads": grads, "adamw": adam, "reference": ref, "kv_cache": per_token * tokens}
    out = {k: v / GIB for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


SETTINGS = {
    "lora": "1 GPU, LoRA, bf16 base",
    "qlora": "1 GPU, QLoRA, 4-bit base",
    "full-ddp": "N GPUs, full fine-tune, DDP",
    "full-zero2": "N GPUs, full fine-tune, ZeRO-2",
    "full-zero3": "N GPUs (or nodes), full fine-tune, ZeRO-3 / FSDP",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8, help="GPUs the sharded settings split over (default: 8)")
    ap.add_argument("--batch", type=int, default=2, help="questions per GPU per micro-batch (default: 2)")
    ap.add_argument("--G", type=int, default=4, help="completions per question (default: 4, the seed's)")
    ap.add_argument("--C", type=int, default=16, help="most new tokens per completion (default: 16)")
    ap.add_argument("--beta", action="store_true", help="count the KL reference copy (full fine-tuning)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    rows = []
    for name, m in MODELS.items():
        for key, label in SETTINGS.items():
            for shared in (True, False):
                est = per_gpu(m, key, a.gpus, a.beta, a.batch, a.G, a.C, shared)
                rows.append(
                    {
                        "model": name,
                        "setting": label,
                        "shared_prefix": shared,
                        **{k: round(v, 1) for k, v in est.items()},
                    }
                )
    if a.json:
        print(json.dumps({"gpus": a.gpus, "batch": a.batch, "G": a.G, "C": a.C, "beta": a.beta, "rows": rows}))
        return
    print(
        f"GiB per GPU; {a.gpus} GPUs where sharded; {a.batch} questions x G={a.G} x {a.C} new tokens; "
        f"KL reference {'counted' if a.beta else 'off (beta = 0)'}"
    )
    print(f"{'model':36} {'setting':48} {'weights':>8} {'grads':>6} {'adamw':>6} {'ref':>5} {'kv':>9} {'total':>6}")
    for r in rows:
        kv = f"{r['kv_cache']:.1f}{'' if r['shared_prefix'] else ' (x G)'}"
        print(
            f"{r['model']:36} {r['setting']:48} {r['weights']:8.1f} {r['grads']:6.1f} {r['adamw']:6.1f} "
            f"{r['reference']:5.1f} {kv:>9} {r['total']:6.1f}"
        )


if __name__ == "__main__":
    main()
