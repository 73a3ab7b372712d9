"""The ``vqa-grpo`` command's arguments: every subcommand, its options and their ``--help`` text.

``parse_args`` also takes ``section.key=value`` config overrides from anywhere on the line;
cli.py dispatches what it returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from vqa_grpo import config as C
from vqa_grpo.evaluation.judge_html import DEFAULT_N, MODES


def _config_help() -> str:
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
    synth.add_argument(
        "--task",
        choices=("single", "multi-image", "video"),
        default="single",
        help="one image per question, questions across 2-3 images (rows with images), or short clips "
        "(rows with video, a list of frames): docs/synthetic.md (default: single)",
    )
    synth.add_argument("--frames", type=int, default=None, help="frames per clip of --task video (default: 8)")
    synth.add_argument(
        "--video-format",
        choices=("frames", "mp4"),
        default=None,
        help="--task video's clips as lists of PNG frames, or as MP4 files (needs PyAV: "
        "pip install 'vqa-grpo[video]') (default: frames)",
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
        "llava, llava_next, idefics3, smolvlm, gemma3, phi4_multimodal or phi3_v",
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
    jd.add_argument("--n", type=int, default=DEFAULT_N, help="questions to ask, drawn at random (default: %(default)s)")
    jd.add_argument("--seed", type=int, default=0, help="seed of the draw and of the answer order (default: 0)")
    jd.add_argument(
        "--mode",
        default="grade",
        choices=MODES,
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
        help="train both stages on this many questions, same steps (data efficiency; default: all the training split)",
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
