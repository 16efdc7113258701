"""The `align` command: parse, call, report. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="align", description="SFT then DPO for Mixtral-family MoE models.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the recipe's stages in order (sft, then dpo)"),
        ("sft", "run only the SFT stage"),
        ("dpo", "run only the DPO stage (continues OUTPUT_DIR/sft when present)"),
        ("check", "validate a recipe and print it resolved (no training)"),
    ):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("recipe", help="YAML recipe file")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dpo.beta=0.05 output_dir=runs/x")
        if name != "check":
            sp.add_argument(
                "--resume",
                action="store_true",
                help="skip verified finished stages; continue the current one from its latest checkpoint",
            )
    prof = sub.add_parser("profile-experts", help="routing profile of a stage's training data (routing.json + PNG)")
    prof.add_argument("recipe")
    prof.add_argument("overrides", nargs="*")
    prof.add_argument("--stage", choices=["sft", "dpo"], default="sft")
    prof.add_argument("--max-tokens", type=int, default=50000)
    prof.add_argument("--out", help="output directory (default OUTPUT_DIR/routing)")
    plan = sub.add_parser("plan", help="per-GPU memory plan of a recipe: FITS / DOES NOT FIT, and what to change")
    plan.add_argument("recipe")
    plan.add_argument("overrides", nargs="*")
    plan.add_argument("--accelerate-config", help="accelerate YAML (DDP / DeepSpeed ZeRO-3) the run will use")
    plan.add_argument("--gpus", type=int, help="number of GPUs (default: from the accelerate config, else 1)")
    plan.add_argument("--gpu-mem", help="memory per GPU, e.g. 80GiB (default 80GiB)")
    tiny = sub.add_parser("tiny-model", help="write the embedded tiny Mixtral (real Mixtral tokenizer)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    return p


def _setup_logging() -> None:
    """align's own log lines on stderr, main process only (other ranks: warnings and errors)."""
    main_process = os.environ.get("RANK", "0") == "0"
    from align.security import SecretFilter

    handler = logging.StreamHandler()  # the current sys.stderr: main() may run more than once in a process
    handler.setFormatter(logging.Formatter("[align] %(message)s"))
    handler.addFilter(SecretFilter())  # no token value ever reaches a log line
    logger = logging.getLogger("align")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    import datasets
    import transformers

    datasets.disable_progress_bars()  # per-map bars drown align's own lines; the run reports progress itself
    transformers.utils.logging.disable_progress_bar()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "tiny-model":
        from align.tiny import build_tiny_mixtral

        print(f"wrote {build_tiny_mixtral(args.out_dir, seed=args.seed)}")
        return 0
    from align.config import load_recipe, recipe_to_yaml

    recipe = load_recipe(args.recipe, args.overrides)
    if getattr(args, "resume", False):
        recipe.resume = True
    if args.command == "check":
        print(recipe_to_yaml(recipe), end="")
        return 0
    if args.command == "plan":
        from align.plan import plan_command

        print(plan_command(recipe, args.accelerate_config, args.gpus, args.gpu_mem))
        return 0
    if args.command == "profile-experts":
        from align.moe.cli import profile_experts

        print(profile_experts(recipe, args.stage, args.max_tokens, args.out))
        return 0
    from align.pipeline import format_summary, run_pipeline

    stages = recipe.stages if args.command == "run" else [args.command]
    summary = run_pipeline(recipe, stages)
    if os.environ.get("RANK", "0") == "0":
        print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `align` console script and `python -m align`."""
    args = _parser().parse_args(argv)
    _setup_logging()
    from align.errors import AlignError
    from align.security import scrub

    try:
        return _dispatch(args)
    except AlignError as err:
        if args.debug:
            print(scrub(traceback.format_exc()), file=sys.stderr, end="")
        print(f"align: error: {scrub(str(err))}", file=sys.stderr)
        return 2
