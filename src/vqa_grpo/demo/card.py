"""The model card (README.md) of the demo's base, written by the recipe from what it measured."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from vqa_grpo.demo.recognised import FAMILY_OF_QUESTION_TYPE, recognises


def model_card(figures: dict, rows: list[dict], recipe: SimpleNamespace) -> str:
    """Markdown: what the model is, the recipe's settings (``recipe``: the constants of
    demo/base.py), and the held-out figures by family."""
    n, hit = Counter(), Counter()
    for r in rows:
        family = FAMILY_OF_QUESTION_TYPE[r["question_type"]]
        n[family] += 1
        hit[family] += recognises(r["raw"], r["question_type"], r["answers"][0])
    per_family = "\n".join(f"| {f} | {n[f]} | {hit[f] / n[f]:.3f} |" for f in sorted(n))
    sizes = ", ".join(f"{k}={v}" for k, v in recipe.SIZES.items())
    shares = ", ".join(f"{k} {v}" for k, v in recipe.SENTENCE_SHARE.items())
    v_steps, v_lr, v_warmup = recipe.VISION_STAGE
    vision = (
        f"  - stage 0, the vision tower alone (vqa_grpo/demo/vision_pretrain.py): {v_steps} steps, peak lr "
        f"{v_lr:g}, {v_warmup} warmup steps, each output token naming the shape and colour of the object "
        f"centred in its cell, on the scenes of {recipe.VISION_QUESTIONS} questions "
        f"(data seed {recipe.DATA_SEED - 1})\n"
    )
    frozen = ", the vision tower and its merger frozen (model.freeze_vision)" if recipe.FREEZE_VISION else ""
    stages = vision + "\n".join(
        f"  - stage {i + 1}: {steps} steps, peak lr {lr:g}, {warmup} warmup steps, data seed {recipe.DATA_SEED + i}"
        f"{frozen}"
        for i, (steps, lr, warmup) in enumerate(recipe.STAGES)
    )
    examples = "\n".join(f"- {r['question']} -> {r['raw']!r} (answer {r['answers'][0]})" for r in rows[:8])
    return f"""# vqa-grpo demo base (tiny Qwen2-VL)

The pretrained stand-in that `vqa-grpo demo` starts from: a Qwen2VLForConditionalGeneration with
a tiny config ({sizes}) and a word-level tokenizer, trained from random weights (its vision tower
first on its own, as a real VLM's is pretrained) by SFT on
synthetic questions (vqa_grpo.data.synthetic), answering in a sentence for a share of each
family's questions ({shares}) and with the bare answer otherwise. Not a real pretrained model:
it knows only the synthetic scenes.

## Recipe

`.venv/bin/python scripts/build_demo_base.py` (vqa_grpo/demo/base.py):

- model seed {recipe.MODEL_SEED}; the vision stage, then SFT in stages, each a cosine schedule from
  the last one's model on {recipe.N_QUESTIONS} new synthetic questions ({recipe.IMAGE_SIZE} px images;
  1% held out by the run), batch {recipe.BATCH}, AdamW, gradient clipping 1.0, on the CPU (2 threads):
{stages}
- wall time: {figures["train_seconds"]} s (the stages', each with its data synthesis)

## Held-out figures

{figures["n_eval"]} new questions (seed {recipe.EVAL_SEED}), greedy, at most 16 new tokens:
recognised {figures["recognised"]:.3f} (exactly one of the family's candidate answers in the
reply, the right one: vqa_grpo/demo/recognised.py), official VQA accuracy
{figures["vqa_accuracy"]:.3f} (a sentence scores 0).

| family | questions | recognised |
|---|---|---|
{per_family}

First replies:

{examples}
"""
