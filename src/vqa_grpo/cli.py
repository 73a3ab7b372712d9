"""The ``vqa-grpo`` command: parse arguments, call the library, turn user errors into one line.

Bad input (a wrong config key, a missing file, a model directory without a processor) prints
``error: ...`` on one line and exits with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys

from vqa_grpo.errors import RewardFunctionError, TrainingStopped, UserError


def _config_help() -> str:
    from vqa_grpo import config as C

    lines = ["config keys (set in the YAML file or as section.key=value; default shown):"]
    for section, cls in (
        ("model", C.ModelConfig),
        ("data", C.DataConfig),
        ("train", C.TrainConfig),
        ("grpo", C.GRPOConfig),
        ("reward", C.RewardConfig),
        ("eval", C.EvalConfig),
    ):
        docs = C.field_docs(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                sub_docs = C.field_docs(type(value))
                for g in dataclasses.fields(value):
                    lines.append(
                        f"  {section}.{f.name}.{g.name} = {getattr(value, g.name)!r}  {sub_docs.get(g.name, '')}"
                    )
                continue
            lines.append(f"  {section}.{f.name} = {value!r}  {docs.get(f.name, '')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="vqa-grpo", description="Fine-tune vision-language models for VQA with GRPO.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors (default: off)")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or inspect VQA data").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the synthetic CLEVR-like VQA set (JSONL + PNG)")
    synth.add_argument("--out", required=True, help="output directory (required)")
    synth.add_argument("--n", type=int, default=1000, help="number of questions (default: 1000)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    synth.add_argument("--image-size", type=int, default=112, help="image side in pixels (default: 112)")
    synth.add_argument(
        "--unanswerable",
        type=float,
        default=0.0,
        help='share of questions about an object not in the image, answered "unanswerable" (default: 0)',
    )
    synth.add_argument(
        "--ood",
        action="store_true",
        help="write the demo's out-of-distribution set instead: crowded, held-out pairs, rephrased (default: off)",
    )
    insp = data.add_parser("inspect", help="load a data set and report kept rows and skips by reason")
    insp.add_argument("path", help="data file or directory, or hf:NAME (a Hub dataset: docs/data_hub.md)")
    insp.add_argument("--format", default=None, help="data format (default: inferred from the files)")
    insp.add_argument(
        "--image-root", default=None, help="folder of relative image paths (default: the data file's folder)"
    )
    insp.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    insp.add_argument("overrides", nargs="*", help="config overrides, e.g. data.columns.image=img")

    model = sub.add_parser("model", help="build models").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("tiny", help="build a tiny randomly initialised VLM offline")
    tiny.add_argument(
        "--family",
        default="qwen2_vl",
        help="(default: qwen2_vl) model family: qwen2_vl, qwen2_5_vl, "
        "llava, llava_next, idefics3, gemma3, phi4_multimodal or phi3_v",
    )
    tiny.add_argument("--out", required=True, help="output directory (required)")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")

    for name, text in (
        ("sft", "supervised fine-tuning on the ground-truth answers (seed eq. 1)"),
        ("train", "GRPO fine-tuning"),
    ):
        sp = sub.add_parser(name, help=text, description=text, epilog=_config_help(), formatter_class=fmt)
        sp.add_argument("--config", default=None, help="YAML config file (default: none, the built-in defaults)")
        sp.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after the file")

    ev = sub.add_parser(
        "evaluate",
        help="generate answers and write predictions.jsonl and metrics.json",
        epilog=_config_help(),
        formatter_class=fmt,
    )
    ev.add_argument("--model", required=True, help="model, checkpoint or LoRA adapter directory (required)")
    ev.add_argument("--data", required=True, help="data file or directory, or hf:NAME, to evaluate on (required)")
    ev.add_argument("--out", default=None, help="output directory (default: print only)")
    ev.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation in --out (default: refuse it)"
    )
    ev.add_argument(
        "--rephrase", action="store_true", help="also ask each question reworded (eval.rephrase; default: off)"
    )
    ev.add_argument(
        "--perturb",
        default=None,
        metavar="NAME[:SEVERITY],...",
        help="also answer on perturbed images, one pass each: gaussian_blur, gaussian_noise, jpeg, brightness, "
        "contrast, crop, rotate at severity 1-5, a NAME alone all five (eval.perturb; default: none)",
    )
    ev.add_argument("--config", default=None, help="YAML config file for eval.*/data.* settings (default: none)")
    ev.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. eval.batch_size=64")

    sc = sub.add_parser("score", help="score a predictions file: metric table overall and per answer type")
    sc.add_argument("predictions", help="JSONL file with a prediction and answers per row")
    sc.add_argument("--prediction-field", default="prediction", help="field of the prediction (default: prediction)")
    sc.add_argument("--answers-field", default="answers", help="field of the reference answers (default: answers)")
    sc.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    sc.add_argument(
        "--metric",
        action="append",
        default=None,
        choices=("anls", "relaxed_accuracy", "exact_match", "multiple_choice"),
        help="a benchmark's metric to add (repeat for several): anls (DocVQA, InfographicVQA), relaxed_accuracy "
        "(ChartQA), exact_match (GQA), multiple_choice (A-OKVQA; answers [letter, text]) (default: none)",
    )
    sc.add_argument(
        "--vqa-convention",
        default=None,
        choices=("official", "lmms_eval"),
        help="VQA accuracy as vqaEval.py or lmms-eval computes it (default: lmms_eval with --benchmark, as "
        "evaluate on a benchmark; else official)",
    )
    sc.add_argument(
        "--benchmark",
        default=None,
        help="the benchmark the predictions are of (docvqa, chartqa, gqa, textvqa, ...): adds its metric, and "
        "under --vqa-convention lmms_eval takes that lmms-eval task's form (default: none)",
    )

    cp = sub.add_parser(
        "compare", help="evaluation runs side by side, each tested against the first (paired bootstrap)"
    )
    cp.add_argument(
        "runs",
        nargs="+",
        help="output directories of `vqa-grpo evaluate --out` (two or more; the first is the baseline)",
    )
    cp.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")

    rp = sub.add_parser("report", help="write RUN_DIR/report.html and RUN_DIR/plots/*.png")
    rp.add_argument("run_dir", help="training run directory (holding metrics.jsonl)")
    rp.add_argument("--before", default=None, help="`evaluate --out` directory before training (default: none)")
    rp.add_argument("--after", default=None, help="`evaluate --out` directory after training (default: none)")
    rp.add_argument("--data", default=None, help="the data both evaluations ran on, for gallery images (default: none)")
    rp.add_argument("--out", default=None, help="output file (default: RUN_DIR/report.html)")

    jd = sub.add_parser("judge", help="write a page on which people judge the models' answers (judge.html, key.json)")
    jd.add_argument("evals", nargs="+", help="output directories of `vqa-grpo evaluate --out` (the models to judge)")
    jd.add_argument("--data", required=True, help="the data the evaluations ran on, for the images (required)")
    jd.add_argument("--out", required=True, help="folder for judge.html and key.json (required)")
    jd.add_argument("--n", type=int, default=60, help="questions to ask, drawn at random (default: 60)")
    jd.add_argument("--seed", type=int, default=0, help="seed of the draw and of the answer order (default: 0)")
    jd.add_argument(
        "--mode",
        default="grade",
        choices=("grade", "pairwise"),
        help="grade: mark each answer right/partly/wrong; pairwise: the better of two evaluations' (default: grade)",
    )
    jd.add_argument("--overwrite", action="store_true", help="replace another page's key in --out (default: refuse)")

    ag = sub.add_parser("agreement", help="each metric's agreement with the people's judgments (kappa, rho)")
    ag.add_argument("judgments", nargs="+", help="JSONL files exported from a judge page (one per judge, or merged)")
    ag.add_argument("--judge-dir", required=True, help="the judge page's folder, holding its key.json (required)")
    ag.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    ag.add_argument(
        "--threshold",
        action="append",
        default=None,
        help="NAME=VALUE: a metric's score at which it says right (repeatable; default: 0.5, semantic 0.8)",
    )
    ag.add_argument(
        "--reward",
        action="append",
        default=None,
        help="module:function, a reward function of your own to score the answers too (repeatable; default: none)",
    )

    mg = sub.add_parser("merge", help="merge a LoRA adapter into its base model (a plain transformers model)")
    mg.add_argument("adapter", help="LoRA adapter directory (a run's final/ with model.lora=true)")
    mg.add_argument("--out", required=True, help="output directory for the merged model and processor (required)")
    mg.add_argument(
        "--overwrite", action="store_true", help="replace what --out holds already (default: refuse a non-empty --out)"
    )

    demo = sub.add_parser(
        "demo", help="GRPO from the shipped pretrained tiny base beside the same-budget SFT, evaluated offline"
    )
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and of training (default: 0)")
    demo.add_argument(
        "--train-questions",
        type=int,
        default=None,
        help="train both stages on this many questions, same steps (data efficiency; default: all 2,400)",
    )
    demo.add_argument(
        "overrides", nargs="*", help="section.key=value overrides of the GRPO stage, e.g. reward.components=[composite]"
    )
    _debug_after_the_command(p)
    return p


def _debug_after_the_command(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every subcommand too (``vqa-grpo train --debug ...``): set only when given
    there, so that one given before the subcommand stands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    _debug_after_the_command(sub)
                else:
                    sub.add_argument(
                        "--debug",
                        action="store_true",
                        default=argparse.SUPPRESS,
                        help="as vqa-grpo --debug (default: off)",
                    )


# A config override: section.key=value (a dotted key, then "="), wherever it stands on the line.
OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)+=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Options and ``section.key=value`` overrides in any order: the overrides are taken out of
    the line (in the order typed) before argparse sees the rest, which argparse cannot do itself
    for a positional list followed by options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = parser.parse_args([a for a in argv if not OVERRIDE.match(a)])
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(overrides)} (this command takes no config overrides)")
        args.overrides = [*args.overrides, *overrides]
    return args


def _is_main_process() -> bool:
    """Rank 0 of a launcher's processes (accelerate launch, torchrun), or the only process."""
    return os.environ.get("RANK", "0") == "0"


def dispatch(args: argparse.Namespace) -> int:
    if args.command in ("data", "model", "demo") and getattr(args, "out", None) is not None:
        from vqa_grpo.paths import check_folder

        check_folder(args.out, "--out")  # a file there is one line now, not a traceback after the work
    if args.command == "data" and args.data_command == "synth":
        from vqa_grpo.data.synthetic import MIN_IMAGE_SIZE, synthesize

        if args.n < 1:
            raise UserError(f"--n={args.n}: need at least 1 question")
        if args.image_size < MIN_IMAGE_SIZE:
            raise UserError(f"--image-size={args.image_size}: need at least {MIN_IMAGE_SIZE} px")
        if not 0 <= args.unanswerable <= 1:
            raise UserError(f"--unanswerable={args.unanswerable}: give a share in [0, 1], e.g. 0.1")
        if args.ood and args.unanswerable:
            raise UserError("--ood takes no --unanswerable: the out-of-distribution set asks answerable questions")
        if args.ood:
            from vqa_grpo.data.synthetic_shift import synthesize_shifted

            path = synthesize_shifted(args.out, n=args.n, seed=args.seed, image_size=args.image_size)
        else:
            path = synthesize(
                args.out, n=args.n, seed=args.seed, image_size=args.image_size, unanswerable=args.unanswerable
            )
        print(f"wrote {args.n} questions to {path}")
        return 0
    if args.command == "data" and args.data_command == "inspect":
        from vqa_grpo.data.inspect import inspect_command

        return inspect_command(args.path, args.format, args.image_root, args.json, args.overrides)
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
        from vqa_grpo.evaluation.evaluate import format_headline, format_table
        from vqa_grpo.evaluation.rephrase_check import format_rephrase

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
            from vqa_grpo.evaluation.robustness import format_robustness

            print(format_robustness(metrics["robustness"], metrics.get("primary_metric")))
        if args.out:
            print(f"wrote {args.out}/predictions.jsonl and {args.out}/metrics.json")
        return 0
    if args.command == "score":
        from vqa_grpo.evaluation.score import run_score

        return run_score(
            args.predictions,
            args.prediction_field,
            args.answers_field,
            args.json,
            metrics=args.metric or [],
            vqa_convention=args.vqa_convention,
            benchmark=args.benchmark,
        )
    if args.command == "compare":
        from vqa_grpo.evaluation.compare import compare_command

        return compare_command(args.runs, args.json)
    if args.command == "report":
        from vqa_grpo.evaluation.report import write_report

        path = write_report(args.run_dir, before=args.before, after=args.after, data_path=args.data, out=args.out)
        print(f"wrote {path}")
        return 0
    if args.command == "judge":
        from vqa_grpo.evaluation.judge import judge_command

        return judge_command(args.evals, args.out, args.data, args.n, args.seed, args.mode, args.overwrite)
    if args.command == "agreement":
        from vqa_grpo.evaluation.agreement import agreement_command

        return agreement_command(args.judgments, args.judge_dir, args.json, args.threshold or [], args.reward or [])
    if args.command == "merge":
        from vqa_grpo.paths import check_folder
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
