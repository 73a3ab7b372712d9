"""The ``vqa-grpo`` command: parse arguments, call the library, turn user errors into one line.

Bad input (a wrong config key, a missing file, a model directory without a processor) prints
``error: ...`` on one line and exits with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vqa_grpo.cli_parser import build_parser, parse_args
from vqa_grpo.errors import RewardFunctionError, TrainingStopped, UserError
from vqa_grpo.paths import check_folder


def _is_main_process() -> bool:
    """Rank 0 of a launcher's processes (accelerate launch, torchrun), or the only process."""
    return os.environ.get("RANK", "0") == "0"


def dispatch(args: argparse.Namespace) -> int:
    """Call the library for ``args.command`` and print what it returns. Each branch imports what it
    uses, so that ``--help`` and the light commands do not wait for torch and transformers."""
    if args.command in ("data", "model", "demo") and getattr(args, "out", None) is not None:
        check_folder(args.out, "--out")  # a file there is one line up front, not a traceback after the work
    if args.command == "data" and args.data_command == "synth":
        from vqa_grpo.data.synthetic_task import synthesize_task

        options = dict(seed=args.seed, image_size=args.image_size, unanswerable=args.unanswerable, ood=args.ood)
        path = synthesize_task(
            args.task, args.out, args.n, frames=args.frames, video_format=args.video_format, **options
        )
        print(f"wrote {args.n} questions to {path}")
        return 0
    if args.command == "data" and args.data_command == "inspect":
        from vqa_grpo.config_load import load_config
        from vqa_grpo.data.inspect import inspect_data
        from vqa_grpo.rewards.benchmark import check_metrics_fit

        seen = inspect_data(args.path, load_config(None, args.overrides), args.format, args.image_root)
        print(json.dumps(seen.to_dict()) if args.json else seen.text())
        seen.check_skips()  # after the report, as training would refuse the data; and the metric:
        check_metrics_fit(
            [*seen.uses["reward"], seen.uses["eval_metric"]], [e.answers for e in seen.examples], args.path
        )
        return 0
    if args.command == "model":
        from vqa_grpo.models.tiny import build_tiny

        out = build_tiny(args.family, args.out, seed=args.seed)
        print(f"wrote tiny {args.family} model to {out}")
        return 0
    if args.command in ("sft", "train"):
        import vqa_grpo

        cfg = vqa_grpo.load_config(args.config, args.overrides)
        result = (vqa_grpo.sft if args.command == "sft" else vqa_grpo.train)(cfg)
        last = result.eval_history[-1] if result.eval_history else {}
        if not _is_main_process():
            return 0
        print(f"done: {result.steps} steps in {result.wall_seconds:.1f}s; final model in {result.final_dir}")
        if last:
            print("eval: " + ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "step"))
        return 0
    if args.command == "evaluate":
        import vqa_grpo
        from vqa_grpo.evaluation.evaluate import EVAL_FILES, format_headline, format_table
        from vqa_grpo.evaluation.rephrase_check import FILE as REPHRASED
        from vqa_grpo.evaluation.rephrase_check import format_rephrase
        from vqa_grpo.evaluation.robustness import FILE as PERTURBED
        from vqa_grpo.evaluation.robustness import format_robustness

        perturb = [f"eval.perturb={json.dumps(args.perturb.split(','))}"] if args.perturb is not None else []
        cfg = vqa_grpo.load_config(args.config, args.overrides + ["eval.rephrase=true"] * args.rephrase + perturb)
        metrics = vqa_grpo.evaluate(args.model, args.data, cfg, args.out, overwrite=args.overwrite)
        if not _is_main_process():
            return 0
        print(format_table(metrics))
        print(format_headline(metrics))
        if "rephrase" in metrics:
            print(format_rephrase(metrics["rephrase"]))
        if "robustness" in metrics:
            print(format_robustness(metrics["robustness"], metrics.get("primary_metric")))
        if args.out:
            passes = [REPHRASED] * ("rephrase" in metrics) + [PERTURBED] * ("robustness" in metrics)
            print(f"wrote {', '.join(f'{args.out}/{name}' for name in [*passes, *EVAL_FILES])}")
        return 0
    if args.command == "score":
        from vqa_grpo.evaluation.score import format_score, score_file

        result = score_file(
            args.predictions,
            args.prediction_field,
            args.answers_field,
            metrics=args.metric or [],
            vqa_convention=args.vqa_convention,
            benchmark=args.benchmark,
        )
        print(json.dumps(result) if args.json else format_score(result))
        return 0
    if args.command == "compare":
        from vqa_grpo.evaluation.compare import compare_runs, format_comparison

        result = compare_runs(args.runs)
        print(json.dumps(result) if args.json else format_comparison(result))
        return 0
    if args.command == "report":
        from vqa_grpo.evaluation.report import write_report

        path = write_report(args.run_dir, before=args.before, after=args.after, data_path=args.data, out=args.out)
        print(f"wrote {path}")
        return 0
    if args.command == "judge":
        from vqa_grpo.evaluation.judge import format_written, write_judge

        path, key = write_judge(
            args.evals, args.out, args.data, n=args.n, seed=args.seed, mode=args.mode, overwrite=args.overwrite
        )
        print(format_written(path, key))
        return 0
    if args.command == "agreement":
        from vqa_grpo.evaluation.agreement import format_agreement, measure_agreement
        from vqa_grpo.evaluation.agreement_scores import parse_thresholds

        thresholds = parse_thresholds(args.threshold or [])
        result = measure_agreement(args.judgments, args.judge_dir, thresholds=thresholds, user=args.reward or [])
        print(json.dumps(result) if args.json else format_agreement(result))
        return 0
    if args.command == "merge":
        from vqa_grpo.training.export import merge_adapter

        check_folder(args.out, "--out")  # before the base model loads
        print(f"wrote the merged model to {merge_adapter(args.adapter, args.out, overwrite=args.overwrite)}")
        return 0
    if args.command == "demo":
        from vqa_grpo.demo import run_demo

        run_demo(args.out, seed=args.seed, grpo_overrides=args.overrides, train_questions=args.train_questions)
        return 0
    raise AssertionError(args.command)


def _say(line: str) -> None:
    """One line on stderr in one write: print's two (the text, then its newline, when stderr is
    unbuffered) let a launcher's own line land between them, on the same line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    # The library's warnings, and which GRPO path runs (models/prefix.py), on stderr.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("vqa_grpo.prefix").setLevel(logging.INFO)
    try:
        return dispatch(args)
    except TrainingStopped as e:  # a checkpoint was saved; the message says where and how to go on
        if args.debug:
            raise
        if _is_main_process() or e.every_rank:  # every rank stops alike; one says so
            _say(f"stopped: {e}")
        return e.exit_code
    except RewardFunctionError as e:  # during training: the last checkpoint on disk stays as it was
        if args.debug:
            raise
        if _is_main_process():
            _say(f"error: {e}")
        return 1
    except UserError as e:
        if args.debug:
            raise
        if _is_main_process():
            _say(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
