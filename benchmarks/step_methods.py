"""The ways to spend a GRPO step that grpo_step.py measures, each run in its own worker process
(the module docstring of grpo_step.py says what each does)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from step_setup import (
    Meter,
    Settings,
    _grpo_cfg,
    _optimizer,
    drive,
    image_tokens_per_question,
    load_examples,
    say,
    wait_for_turn,
)


def run_vqa_grpo(s: Settings, model_dir: Path, data_dir: Path, device, shared_prefix: str = "auto") -> dict:
    from vqa_grpo.config import ModelConfig, RewardConfig
    from vqa_grpo.grpo.plan import choose_plan
    from vqa_grpo.grpo.rollout import grpo_objective, make_rollout_and_prefill
    from vqa_grpo.models.loading import load_model

    lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=s.dtype, lora=bool(s.lora), lora_r=16), device)
    lm.model.train()
    opt, grpo, reward = _optimizer(lm.model), _grpo_cfg(s, shared_prefix), RewardConfig()
    plan = choose_plan(lm.model, lm.adapter, grpo)  # as the training loop chooses it
    steps = load_examples(s, data_dir)
    paths, seen = set(), []

    def step(i: int) -> float:
        examples, images = steps[i]
        ro, prefill = make_rollout_and_prefill(
            lm.model, lm.adapter, lm.processor, examples, images, grpo, reward, device, plan
        )
        paths.add(
            ("shared prefix" if ro.sampled_on_prefix else "plain") + (", fused prefill" if prefill is not None else "")
        )
        seen.append(image_tokens_per_question(lm.model, ro.prompts.input_ids, len(examples)))
        loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo, prefix=prefill)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(ro.completion_mask.sum())

    out = drive(s, Meter(device), step)
    return {**out, "path": ", ".join(sorted(paths)), "image_tokens_per_question": seen[0]}


def run_seed_loop(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    import torch

    from vqa_grpo.config import ModelConfig, RewardConfig
    from vqa_grpo.data.prompts import user_text, user_texts
    from vqa_grpo.grpo.math import group_advantages
    from vqa_grpo.grpo.rollout import Rollout, grpo_objective
    from vqa_grpo.models.generation import decode, generate
    from vqa_grpo.models.loading import load_model
    from vqa_grpo.models.plan import PLAIN
    from vqa_grpo.rewards import compute_rewards

    lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=s.dtype, lora=bool(s.lora), lora_r=16), device)
    lm.model.train()
    opt, grpo, G = _optimizer(lm.model), _grpo_cfg(s, "off"), s.group_size
    pad = lm.processor.tokenizer.pad_token_id
    steps, seen = load_examples(s, data_dir), []

    def step(i: int) -> float:
        examples, images = steps[i]
        rows = []  # B*G completions, one generate call each
        for ex, im in zip(examples, images):  # im: the question's one image or its list of N
            prompt = lm.adapter.encode_prompts(lm.processor, [im], [user_text(ex.question)]).to(device)
            for _ in range(G):
                rows.append(
                    generate(
                        lm.model,
                        lm.adapter,
                        lm.processor,
                        prompt,
                        PLAIN,
                        max_new_tokens=s.max_new_tokens,
                        do_sample=True,
                        temperature=1.0,
                        top_p=1.0,
                    )
                )
        C = max(r.ids.shape[1] for r in rows)
        ids = torch.cat([torch.nn.functional.pad(r.ids, (0, C - r.ids.shape[1]), value=pad) for r in rows])
        mask = torch.cat([torch.nn.functional.pad(r.mask, (0, C - r.mask.shape[1])) for r in rows])
        texts = [t for r in rows for t in decode(lm.processor, r)]
        rep = [e for e in examples for _ in range(G)]
        scored = compute_rewards(
            texts, [e.answers for e in rep], [e.answer_type for e in rep], RewardConfig(), warn_bad_inputs=False
        )
        rewards = torch.as_tensor(scored.total, dtype=torch.float32)
        ro = Rollout(
            examples=examples,
            prompts=lm.adapter.encode_prompts(lm.processor, images, user_texts(examples)).to(device),
            group_size=G,
            completion_ids=ids,
            completion_mask=mask,
            truncated=torch.cat([r.truncated for r in rows]),
            temperatures=torch.ones(len(rows), device=device),
            sampling_logprobs=torch.zeros(ids.shape, device=device),
            answers=texts,
            rewards=rewards,
            reward_parts={},
            advantages=group_advantages(rewards, G).to(device),
        )
        seen.append(image_tokens_per_question(lm.model, ro.prompts.input_ids, len(examples)))
        loss, _ = grpo_objective(lm.model, lm.adapter, lm.processor, ro, grpo)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(mask.sum())

    return {**drive(s, Meter(device), step), "image_tokens_per_question": seen[0]}


def run_limit(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    """Bare model calls: prefill, G-row decode from the repeated cache, one forward+backward."""
    import torch

    from vqa_grpo.config import ModelConfig
    from vqa_grpo.data.prompts import user_texts
    from vqa_grpo.models.loading import load_model

    lm = load_model(ModelConfig(name_or_path=str(model_dir), dtype=s.dtype), device)
    model, G, C = lm.model, s.group_size, s.max_new_tokens
    rope = model.model.get_rope_index
    steps = []
    for examples, images in load_examples(s, data_dir):  # the processor is not part of the limit
        steps.append(lm.adapter.encode_prompts(lm.processor, images, user_texts(examples)).to(device))

    def step(i: int) -> float:
        prompts = steps[i]
        inputs, mask = prompts.model_inputs(), prompts.attention_mask
        positions, deltas = rope(
            prompts.input_ids, inputs["mm_token_type_ids"], inputs["image_grid_thw"], attention_mask=mask
        )
        start = (mask.sum(1) + deltas.view(-1)).repeat_interleave(G)  # [R] position of completion token 0

        def after_prefix(cache, tokens, offset, am):  # tokens [R, T] at completion offsets offset..offset+T-1
            pos = start[:, None] + offset + torch.arange(tokens.shape[1], device=device)[None, :]  # [R, T]
            return model(
                input_ids=tokens,
                attention_mask=am,
                position_ids=pos.unsqueeze(0).expand(3, -1, -1),
                cache=cache,
                use_cache=True,
            ).logits

        model.eval()
        with torch.no_grad():  # sampling: one prefill, then C-1 decode steps of the R rows
            out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            cache = out.cache
            cache.batch_repeat_interleave(G)
            am = mask.repeat_interleave(G, 0)
            token = out.logits[:, -1].argmax(-1).repeat_interleave(G)[:, None]  # [R, 1] completion token 0
            tokens = [token]
            for t in range(1, C):
                am = torch.cat([am, torch.ones_like(token)], 1)
                token = after_prefix(cache, token, t - 1, am)[:, -1].argmax(-1)[:, None]
                tokens.append(token)
        model.train()  # the loss: the prompt once with gradient, its G completions against it
        out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = out.cache
        cache.batch_repeat_interleave(G)
        completion = torch.cat(tokens[:-1], 1)  # [R, C-1]: the last token predicts nothing
        am = torch.cat([mask.repeat_interleave(G, 0), torch.ones_like(completion)], 1)
        logits = torch.cat([out.logits[:, -1:].repeat_interleave(G, 0), after_prefix(cache, completion, 0, am)], 1)
        logits.float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        return float(prompts.size * G * C)

    seen = image_tokens_per_question(model, steps[0].input_ids, steps[0].size)
    return {**drive(s, Meter(device), step), "image_tokens_per_question": seen}


def run_trl(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    try:
        import trl
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        say("ready")  # nothing to time: answer every turn at once
        for _ in range(s.warmup + s.steps):
            sys.stdin.readline()
            say({"error": "trl is not installed: pip install 'vqa-grpo[bench]'"})
        return {"error": "trl is not installed: pip install 'vqa-grpo[bench]'"}
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

    from vqa_grpo.config import RewardConfig
    from vqa_grpo.data.prompts import user_text
    from vqa_grpo.rewards import compute_rewards

    steps = load_examples(s, data_dir)
    rows = []  # TRL's `images` column: a list per row, one {"type": "image"} entry for each, before the text
    for examples, visuals in steps:
        for e, v in zip(examples, visuals):
            images = [v] if s.images_per_question == 1 else v
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": user_text(e.question)}]
            prompt = [{"role": "user", "content": content}]
            rows.append({"prompt": prompt, "images": images, "answers": e.answers, "answer_type": e.answer_type})

    shown = []  # the image entries of the first prompt TRL scores: what it passed the processor

    def vqa_reward(prompts, completions, answers, answer_type, **_):
        if not shown:
            shown.append(sum(part["type"] == "image" for m in prompts[0] for part in m["content"]))
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return list(compute_rewards(texts, answers, answer_type, RewardConfig(), warn_bad_inputs=False).total)

    meter, tokens = Meter(device), []

    class TakeTurns(TrainerCallback):
        """Each optimiser step starts when the parent says; its wall time is reported at its end."""

        def on_train_begin(self, args, state, control, **kwargs):
            say("ready")

        def on_step_begin(self, args, state, control, **kwargs):
            wait_for_turn(state.global_step, s, meter)
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            meter.sync()
            say({"t": time.perf_counter() - self.t0, "cpu": time.process_time() - self.c0})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                tokens.append(float(logs["completions/mean_length"]) * s.questions * s.group_size)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"),
        per_device_train_batch_size=s.questions * s.group_size,
        num_generations=s.group_size,
        max_completion_length=s.max_new_tokens,
        max_steps=s.warmup + s.steps,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        learning_rate=1e-5,
        gradient_checkpointing=False,
        shuffle_dataset=False,
        use_cpu=device.type == "cpu",
        bf16=s.dtype == "bf16",
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=s.seed,
    )
    import torch

    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.bfloat16 if s.dtype == "bf16" else torch.float32
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=vqa_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoProcessor.from_pretrained(model_dir),
        callbacks=[TakeTurns()],
    )
    trainer.train()
    out = {"tokens": tokens[s.warmup :], "peak_mib": meter.peak_mib(), "trl_version": trl.__version__}
    return {**out, "images_in_prompt": shown[0]}


def run_plain(s: Settings, model_dir: Path, data_dir: Path, device) -> dict:
    """The library's step on the plain path (grpo.shared_prefix=off): each row runs its prompt and image."""
    return run_vqa_grpo(s, model_dir, data_dir, device, shared_prefix="off")


RUNNERS = {"vqa_grpo": run_vqa_grpo, "trl": run_trl, "seed_loop": run_seed_loop, "limit": run_limit, "plain": run_plain}
