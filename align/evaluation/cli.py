"""Parsers and dispatch of `align upcycle`, `align eval` and `align make-prefs` (cli.py only hooks them in)."""

from __future__ import annotations

import argparse

COMMANDS = ("upcycle", "eval", "make-prefs")


def add_commands(sub) -> None:
    """Register the three subcommands on align's subparsers."""
    up = sub.add_parser("upcycle", help="dense Llama/Mistral (safetensors dir or .gguf) -> Mixtral with E experts")
    up.add_argument("dense", help="a transformers safetensors directory or a .gguf file")
    up.add_argument("--experts", type=int, required=True, help="number of experts per layer")
    up.add_argument("--top-k", type=int, required=True, help="experts each token is routed to")
    up.add_argument("--out", required=True, help="output directory (replaced atomically)")
    up.add_argument("--noise", type=float, default=0.0, help="relative noise added to each expert copy (0: exact)")
    up.add_argument("--seed", type=int, default=0, help="seed of the router init and the noise")
    up.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    up.add_argument("--aux-loss-coef", type=float, default=0.02, help="router_aux_loss_coef (Mixtral 8x7B: 0.02)")
    ev = sub.add_parser("eval", help="held-out preference/SFT metrics, task accuracy, samples: eval.json + eval.md")
    ev.add_argument("target", help="a run's OUTPUT_DIR, a stage/adapter dir, or a merged/base model dir")
    ev.add_argument("--data", help="held-out preference pairs (.jsonl); default: the run recipe's dpo eval data")
    ev.add_argument("--sft-data", help="held-out conversations (.jsonl); default: the run recipe's sft eval data")
    ev.add_argument("--tasks", help="verifiable tasks (.jsonl from `align make-prefs`): accuracy judged by code")
    ev.add_argument("--ref", help="reference model: 'base', an adapter dir or a model dir (default: see docs)")
    ev.add_argument("--base", help="base model dir of an adapter (default: its recipe's model)")
    ev.add_argument("--beta", type=float, help="DPO beta of the implicit reward (default: the recipe's)")
    ev.add_argument("--max-rows", type=int, default=64, help="held-out rows used from each data file")
    ev.add_argument("--samples", type=int, default=3, help="sample generations shown in the report")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--long-context", action="store_true", help="also run passkey retrieval and perplexity vs length")
    ev.add_argument("--lengths", default="256,512,1024", help="context lengths (tokens) for --long-context")
    ev.add_argument("--out", help="output directory (default: TARGET/eval)")
    mp = sub.add_parser("make-prefs", help="verifiable tasks -> SFT data and code-judged preference pairs")
    mp.add_argument("out_dir", help="writes tasks_*.jsonl, sft_*.jsonl (and prefs_*.jsonl with --model)")
    mp.add_argument("--model", help="sample responses from this model / adapter dir / run dir, judge them by code")
    mp.add_argument("--base", help="base model dir of an adapter --model (default: its recipe's model)")
    mp.add_argument("--train", type=int, default=256, help="training prompts per split (sft and dpo each)")
    mp.add_argument("--eval", type=int, default=64, help="held-out prompts")
    mp.add_argument("--samples", type=int, default=4, help="responses sampled per prompt with --model")
    mp.add_argument("--temperature", type=float, default=1.0)
    mp.add_argument("--seed", type=int, default=0)


def run_command(args: argparse.Namespace) -> int:
    """Run one of COMMANDS; user errors propagate as AlignError (the CLI prints one line, exit 2)."""
    if args.command == "upcycle":
        from align.upcycle import upcycle

        out = upcycle(
            args.dense, args.out, args.experts, args.top_k, args.noise, args.seed, args.dtype, args.aux_loss_coef
        )
        print(f"wrote {out}")
    elif args.command == "make-prefs":
        from align.evaluation.make_prefs import make_prefs

        result = make_prefs(
            args.out_dir, args.train, args.eval, args.seed, args.model, args.base, args.samples, args.temperature
        )
        for name, stats in result.items():
            if name.startswith("prefs_"):
                print(
                    f"{name}: {stats['pairs']} pairs from {stats['prompts']} prompts "
                    f"(sample accuracy {stats['sample_accuracy']:.3f}, chosen = gold answer {stats['chosen_gold']})"
                )
        print(f"wrote {args.out_dir}")
    else:
        from align.evaluation.report import eval_command

        print(eval_command(args))
    return 0
