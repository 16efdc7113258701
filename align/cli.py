"""The `align` command: parse, call, report. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from align.security import SecretFilter, scrub


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
    _add_publish_commands(sub)
    from align.evaluation.cli import add_commands

    add_commands(sub)  # upcycle, eval, make-prefs
    return p


def _add_publish_commands(sub) -> None:
    """export / push / chat (align/export/, align/hub.py, align/chat_cli.py)."""
    exp = sub.add_parser("export", help="a run's final adapter, or (--merge) base + adapter as a stock checkpoint")
    exp.add_argument("run", help="a run's OUTPUT_DIR (its last finished stage) or a stage dir")
    exp.add_argument("--merge", action="store_true", help="merge the adapter into the base weights")
    exp.add_argument("--out", help="output directory (default RUN/final with --merge, else RUN/adapter)")
    exp.add_argument("--stage", choices=["sft", "dpo"], help="export this stage instead of the last one")
    exp.add_argument("--dtype", default="auto", help="auto (the base's), float32, bfloat16 or float16")
    exp.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB")
    exp.add_argument("--base", help="local dir of the base model (default: the recipe's model)")
    exp.add_argument("--force", action="store_true", help="replace --out if it exists")
    push = sub.add_parser("push", help="upload an adapter or merged dir to a Hugging Face hub in one commit")
    push.add_argument("dir")
    push.add_argument("--repo-id", required=True, help="e.g. my-org/mixtral-8x7b-mydpo-lora")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default="main", help="branch to commit to (created if missing)")
    chat = sub.add_parser("chat", help="talk to an adapter dir or a merged checkpoint (chat template, streamed)")
    chat.add_argument("dir")
    chat.add_argument("--prompt", help="answer this one message and exit (no interactive prompt)")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--base", help="base model for an adapter dir (default: its recipe's model)")


def _setup_logging() -> None:
    """align's own log lines on stderr, main process only (other ranks: warnings and errors)."""
    main_process = os.environ.get("RANK", "0") == "0"
    handler = logging.StreamHandler()  # the current sys.stderr: main() may run more than once in a process
    handler.setFormatter(logging.Formatter("[align] %(message)s"))
    handler.addFilter(SecretFilter())  # no token value ever reaches a log line
    logger = logging.getLogger("align")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    # bitsandbytes 0.50.2 warns at import on every CPU run that an optional `kernels` package is missing
    # (its pure-torch CPU path works); peft imports bitsandbytes, so users saw it on every command
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()  # per-map bars drown align's own lines; the run reports progress itself
    transformers.utils.logging.disable_progress_bar()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "tiny-model":
        from align.tiny import build_tiny_mixtral

        print(f"wrote {build_tiny_mixtral(args.out_dir, seed=args.seed)}")
        return 0
    if args.command in ("export", "push", "chat"):
        return _publish(args)
    from align.evaluation.cli import COMMANDS, run_command

    if args.command in COMMANDS:
        return run_command(args)
    from align.config import load_recipe, recipe_to_yaml

    recipe = load_recipe(args.recipe, args.overrides)
    if getattr(args, "resume", False):
        recipe.resume = True
    if args.command == "check":
        print(scrub(recipe_to_yaml(recipe), replacement="REDACTED"), end="")  # stays loadable YAML
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


def _publish(args: argparse.Namespace) -> int:
    if args.command == "export":
        from align.export import export_run

        out = export_run(
            args.run, args.out, args.merge, args.stage, args.dtype, args.max_shard_size, args.force, args.base
        )
        print(f"wrote {out}")
    elif args.command == "push":
        from align.hub import push_folder

        result = push_folder(args.dir, args.repo_id, private=args.private, revision=args.revision)
        done = f"commit {result.commit}" if result.commit else "nothing to upload"
        counts = f"{len(result.uploaded)} files uploaded, {len(result.unchanged)} unchanged"
        print(f"{result.url}@{args.revision}: {counts} ({done})")
    else:
        from align.chat_cli import chat_command

        return chat_command(args.dir, args.prompt, args.max_new_tokens, args.base)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `align` console script and `python -m align`."""
    args = _parser().parse_args(argv)
    _setup_logging()
    from align.errors import AlignError

    try:
        return _dispatch(args)
    except AlignError as err:
        if args.debug:
            print(scrub(traceback.format_exc()), file=sys.stderr, end="")
        print(f"align: error: {scrub(str(err))}", file=sys.stderr)
        return 2
