"""The model half of scripts/phi3_v_reference.py, which imports it: the original remote
Phi3VForCausalLM built from reference_config() and fill_weights() (or loaded with --load), one
case's forward pass and greedy decode, and the save_pretrained / reload round trip of --save.

Like the script it runs in the transformers 4.40.2 venv; the remote modules come in as the dict
load_remote() returns, and nothing here imports vqa_grpo.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")
EMBED = "model.embed_tokens.weight"
WTE_ALIAS = "model.vision_embed_tokens.wte.weight"


def f64_stats(t: torch.Tensor) -> dict:
    d = t.detach().to(torch.float64)
    return {"sum": d.sum().item(), "abs_sum": d.abs().sum().item(), "sq_sum": (d * d).sum().item()}


def case_key(k: int, size) -> str:
    return f"{k}_{size[0]}x{size[1]}"


def clip_layers_in_checkpoint(ckpt: Path) -> int | None:
    from safetensors import safe_open

    marker = "img_processor.vision_model.encoder.layers."
    layers = set()
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                if marker in name:
                    layers.add(int(name.split(marker, 1)[1].split(".", 1)[0]))
    return max(layers) + 1 if layers else None


def build_model(ri, remote, args, info: dict):
    clip_cfg = remote["image_embedding_phi3_v"].CLIP_VIT_LARGE_PATCH14_336_CONFIG
    info["clip_layers_constant_default"] = clip_cfg.num_hidden_layers
    vision_layers = args.vision_layers
    if args.load is not None and vision_layers is None:
        vision_layers = clip_layers_in_checkpoint(args.load)
        info["clip_layers_detected_in_checkpoint"] = vision_layers
    if vision_layers is not None and vision_layers != clip_cfg.num_hidden_layers:
        clip_cfg.num_hidden_layers = vision_layers
        info["vision_depth_change"] = (
            f"image_embedding_phi3_v.CLIP_VIT_LARGE_PATCH14_336_CONFIG.num_hidden_layers set to {vision_layers} "
            "before building the model (the only change; remote files untouched)"
        )
    info["vision_layers"] = clip_cfg.num_hidden_layers
    Phi3VConfig = remote["configuration_phi3_v"].Phi3VConfig
    Phi3VForCausalLM = remote["modeling_phi3_v"].Phi3VForCausalLM

    t0 = time.perf_counter()
    if args.load is not None:
        config = Phi3VConfig.from_pretrained(str(args.load), attn_implementation="eager")
        model, loading_info = Phi3VForCausalLM.from_pretrained(
            str(args.load),
            config=config,
            torch_dtype=torch.float32,
            attn_implementation="eager",
            output_loading_info=True,
        )
        info["source"] = f"from_pretrained({args.load})"
        info["loading_info"] = {k: sorted(map(str, v)) for k, v in loading_info.items()}
    else:
        config = Phi3VConfig(**ri.reference_config(), attn_implementation="eager")
        model = Phi3VForCausalLM(config)
        info["source"] = "Phi3VConfig(**reference_config()) + fill_weights(model.state_dict())"
    info["build_s"] = time.perf_counter() - t0
    model = model.float().eval()
    info["attn_implementation"] = model.config._attn_implementation

    sd = model.state_dict()
    non_float = [n for n, t in sd.items() if not t.is_floating_point()]
    if non_float:
        raise SystemExit(f"non-float state_dict entries: {non_float}")
    if args.load is None:
        t0 = time.perf_counter()
        filled = ri.fill_weights(sd)
        # embed_tokens and vision_embed_tokens.wte are one module, so state_dict lists the same
        # tensor twice; the checkpoint (and the native code) only has embed_tokens: use its value.
        filled[WTE_ALIAS] = filled[EMBED]
        model.load_state_dict(filled, strict=True)
        info["fill_s"] = time.perf_counter() - t0
        info["wte_alias_note"] = f"{WTE_ALIAS} given the fill_weights value of {EMBED} (same tensor)"
        max_diff = max((sd_t - filled[n]).abs().max().item() for n, sd_t in model.state_dict().items())
        info["max_abs_diff_after_load"] = max_diff
    emb = model.model.embed_tokens.weight
    wte = model.model.vision_embed_tokens.wte.weight
    info["embed_tokens_shared_with_vision_wte"] = bool(emb is wte and emb.data_ptr() == wte.data_ptr())
    if not info["embed_tokens_shared_with_vision_wte"]:
        raise SystemExit("embed_tokens and vision_embed_tokens.wte are no longer shared")
    info["config"] = {
        k: getattr(model.config, k)
        for k in (
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "num_hidden_layers",
            "vocab_size",
            "max_position_embeddings",
            "original_max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "tie_word_embeddings",
        )
    }
    info["rope_scaling_type"] = (model.config.rope_scaling or {}).get("type")
    info["num_parameters"] = sum(p.numel() for p in model.parameters())
    info["state_dict"] = {n: {"shape": list(t.shape), "sum": t.to(torch.float64).sum().item()} for n, t in sd.items()}
    return model


def run_case(ri, model, processor, k: int, size, logits_store: dict, timings: dict) -> dict:
    w, h = size
    key = case_key(k, size)
    inputs = processor(ri.PROMPT, [ri.make_image(w, h)], return_tensors="pt")
    ids = inputs["input_ids"]
    labels = ri.reference_labels(ids)
    rec = {
        "num_crops": k,
        "width": w,
        "height": h,
        "seq_len": ids.shape[1],
        "num_image_tokens": int((ids < 0).sum()),
        "num_label_tokens": int((labels != -100).sum()),
        "image_sizes": inputs["image_sizes"].tolist(),
        "pixel_values_shape": list(inputs["pixel_values"].shape),
    }
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(
            input_ids=ids.clone(),  # the remote embedding clamps input_ids in place
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            labels=labels,
            use_cache=False,
        )
    timings[f"forward_{key}_s"] = time.perf_counter() - t0
    logits = out.logits.float()
    last = logits[0, -1]
    top = torch.topk(last, 5)
    rec.update(
        {
            "logits_shape": list(logits.shape),
            "logits": {k2: v for k2, v in f64_stats(logits).items() if k2 != "sq_sum"},
            "last_top5_ids": top.indices.tolist(),
            "last_top5_values": top.values.tolist(),
            "loss": out.loss.item(),
        }
    )
    logits_store[key] = logits[0, -3:].contiguous()

    t0 = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(
            input_ids=ids.clone(),
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
    timings[f"generate_{key}_s"] = time.perf_counter() - t0
    new = gen.sequences[0, ids.shape[1] :].tolist()
    rec["greedy_new_tokens"] = new
    rec["greedy_step_max_logit"] = [s[0].max().item() for s in gen.scores]
    # distance between the chosen and the runner-up logit at each step (how robust the greedy tokens are)
    rec["greedy_step_top2_margin"] = [(lambda t: (t[0] - t[1]).item())(torch.topk(s[0], 2).values) for s in gen.scores]
    rec["greedy_first_matches_forward_argmax"] = bool(new and new[0] == top.indices[0].item())
    return rec


def save_and_reload(ri, remote, model, processors, case, logits_store, save_dir: Path, timings: dict) -> dict:
    """save_pretrained(safe_serialization=True), copy tokenizer files, and reload it in the remote code."""
    from safetensors import safe_open

    info: dict = {"dir": str(save_dir)}
    t0 = time.perf_counter()
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        try:
            model.save_pretrained(str(save_dir), safe_serialization=True)
            info["plain_save_pretrained"] = "ok"
        except RuntimeError as exc:
            # transformers 4.40.2 refuses to write the shared embed_tokens / vision_embed_tokens.wte
            # tensor twice ("shared tensors ... mismatching the transformers base configuration").
            # Minimal workaround, no remote-code edit: pass the state_dict without the alias, which
            # gives the real checkpoint's layout (it has no vision_embed_tokens.wte key either).
            info["plain_save_pretrained"] = f"{type(exc).__name__}: {exc}"
            state_dict = {n: t for n, t in model.state_dict().items() if n != WTE_ALIAS}
            model.save_pretrained(str(save_dir), safe_serialization=True, state_dict=state_dict)
            info["workaround"] = f"save_pretrained(..., state_dict=model.state_dict() minus {WTE_ALIAS!r})"
        for f in TOKENIZER_FILES:
            shutil.copyfile(ri.SHARED / f, save_dir / f)
        keys = []
        for f in sorted(save_dir.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                keys.extend(fh.keys())
        info.update(
            {
                "ok": True,
                "files": sorted(p.name for p in save_dir.iterdir()),
                "num_keys": len(keys),
                "has_embed_tokens": EMBED in keys,
                "has_vision_wte_alias": WTE_ALIAS in keys,
            }
        )
    except Exception as exc:  # report, do not hide
        info.update({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return info
    timings["save_s"] = time.perf_counter() - t0

    # reload in the official code and check the first case's last-3-position logits
    t0 = time.perf_counter()
    Phi3VForCausalLM = remote["modeling_phi3_v"].Phi3VForCausalLM
    reloaded, loading_info = Phi3VForCausalLM.from_pretrained(
        str(save_dir), torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    reloaded.eval()
    info["reload_loading_info"] = {k: sorted(map(str, v)) for k, v in loading_info.items()}
    info["reload_embed_shared"] = (
        reloaded.model.embed_tokens.weight.data_ptr() == reloaded.model.vision_embed_tokens.wte.weight.data_ptr()
    )
    sd_a, sd_b = model.state_dict(), reloaded.state_dict()
    info["reload_state_dict_max_abs_diff"] = max((sd_a[n] - sd_b[n]).abs().max().item() for n in sd_a)
    k, (w, h) = case
    inputs = processors[k](ri.PROMPT, [ri.make_image(w, h)], return_tensors="pt")
    with torch.no_grad():
        out = reloaded(
            input_ids=inputs["input_ids"].clone(),
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            use_cache=False,
        )
    info["reload_case"] = case_key(k, (w, h))
    diff = out.logits[0, -3:].float() - logits_store[case_key(k, (w, h))]
    info["reload_logits_max_abs_diff"] = diff.abs().max().item()
    timings["reload_s"] = time.perf_counter() - t0
    return info
