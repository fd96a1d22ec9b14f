"""The ``lora-bridge`` command line: a contract users script, so flags and exit codes are stable.

Exit codes: 0 ok, 2 user error (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ._converters import converters

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"lora-bridge: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    parser = _Parser(prog="lora-bridge", description="Train and convert LoRA adapters for SD WebUIs and llama.cpp.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("demo", help="train image and text LoRAs on tiny built-in models, offline")

    train = sub.add_parser("train", help="train a LoRA from a YAML config")
    train.add_argument("--config", required=True, help="YAML file in the shared config schema")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")

    convert = sub.add_parser("convert", help="convert an adapter between PEFT, diffusers, kohya and GGUF")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--to", choices=["peft", "diffusers", "kohya", "bfl", "gguf"])
    convert.add_argument("--base", help="base model to validate against (GGUF, diffusers folder, checkpoint)")
    convert.add_argument("--arch", help="sd1|sd2|sd2-v|sdxl|flux|llama|mistral|qwen2|... when the file does not say")
    convert.add_argument("--dtype", choices=["f32", "f16", "bf16"])
    convert.add_argument("--name", help="output name recorded in the file")
    convert.add_argument("--force", action="store_true", help="overwrite an existing destination")
    convert.add_argument("--svd-rank", type=int, metavar="R",
                         help="approximate LoHa/LoKr modules, and Flux modules of a higher rank as BFL "
                              "fuses them, by rank-R LoRA")

    inspect = sub.add_parser("inspect", help="describe an adapter")
    inspect.add_argument("path")
    inspect.add_argument("--base", help="also list modules that do not fit this base model")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    lint = sub.add_parser("lint", help="check an image dataset folder")
    lint.add_argument("dir")

    caption = sub.add_parser("caption", help="auto-caption images with a local BLIP model")
    caption.add_argument("dir")
    caption.add_argument("--model", required=True, help="local BLIP model folder")
    caption.add_argument("--overwrite", action="store_true", help="replace existing captions")
    caption.add_argument("--to", choices=["txt", "csv"], default="txt", help="sidecar .txt files or metadata.csv")

    upgrade = sub.add_parser("upgrade-ggml", help="convert a legacy GGML .bin (ggml/ggmf/ggjt) model to GGUF")
    upgrade.add_argument("input")
    upgrade.add_argument("output")
    upgrade.add_argument("--n-kv-heads", type=int, help="KV heads (GGML does not store it; LLaMA-2 70B: 8)")
    upgrade.add_argument("--rms-eps", type=float, help="RMS norm epsilon (LLaMA-2: 1e-5)")
    upgrade.add_argument("--context-length", type=int, help="training context (LLaMA-2: 4096)")
    upgrade.add_argument("--rope-base", type=float, help="rope frequency base (default 10000)")
    upgrade.add_argument("--force", action="store_true")

    gen = sub.add_parser("generate", help="answer a prompt with a text base and with base + LoRA, side by side")
    gen.add_argument("--base", required=True, help="the base model (.gguf; an HF folder with --backend torch)")
    gen.add_argument("--lora", required=True, help="the adapter (GGUF file or PEFT folder) trained on --base")
    gen.add_argument("--scale", type=float, default=1.0, help="adapter scale, 0 to 2 (default 1)")
    gen.add_argument("-p", "--prompt", required=True, help="text to continue (with --chat: the user's message)")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user turn in the base's chat template")
    gen.add_argument("--system", default="", help="system message (with --chat)")
    gen.add_argument("--backend", choices=["auto", "llama.cpp", "torch"], default="auto",
                     help="auto: llama.cpp when llama-cpp-python is installed, else LoRA Bridge's torch model")
    gen.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding (default)")
    gen.add_argument("--top-k", type=int, default=40)
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--seed", type=int, default=0, help="the same seed for both answers")
    gen.add_argument("--json", action="store_true", help="print JSON")

    ui = sub.add_parser("ui", help="serve the LoRA Training tab as a standalone app")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=7861)
    ui.add_argument("--models-dir", help="folder of checkpoints/GGUF files to offer")
    ui.add_argument("--output-dir", help="where trained LoRAs are written")
    ui.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                    help="a further folder the app may write to (Convert, Save YAML, runs); repeatable")
    return parser


def _print_inspect(report: dict) -> None:
    """Human-readable inspect output."""
    for key in ("path", "format", "arch", "modules", "ranks", "alphas", "dtypes", "targets"):
        value = report[key]
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        print(f"{key:>10}: {value}")
    print(f"{'components':>10}: " + ", ".join(f"{k} ({v})" for k, v in report["components"].items()))
    if "variant" in report:
        print(f"{'variant':>10}: {report['variant'] or 'unknown'} ({report['variant_from']})")
    if report["dora"]:
        print(f"{'dora':>10}: yes")
    if report.get("algos", ["lora"]) != ["lora"]:
        print(f"{'algos':>10}: " + ", ".join(report["algos"]))
    if report.get("alpha_form"):
        print(f"{'alpha':>10}: {report['alpha_form']}")
    for name, how in sorted(report.get("fused", {}).items()):
        print(f"{'fused':>10}: {name} = {how}")
    for key, value in sorted(report["metadata"].items()):
        text = value if len(value) <= 100 else value[:97] + "..."
        print(f"  meta {key} = {text}")
    for line in report.get("problems", []):
        print(f"{'warning':>10}: {line}")
    if "base_problems" in report:
        problems = report["base_problems"]
        print(f"{'base':>10}: {report['base']}: " + ("fits" if not problems else f"{len(problems)} problem(s)"))
        for line in problems:
            print(f"    {line}")


def _generate(args: argparse.Namespace) -> int:
    """``lora-bridge generate``: the base's and the adapter's answers."""
    from .text.generate import Sampling
    from .text.try_adapter import try_adapter

    sampling = Sampling(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed)
    result = try_adapter(args.base, args.lora, args.prompt, scale=args.scale, chat=args.chat, system=args.system,
                         sampling=sampling, backend=args.backend)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return EXIT_OK
    print(f"backend: {result.backend} ({result.reason}), {result.seconds:g} s")
    print(f"prompt:  {result.prompt!r}")
    print(f"base:    {result.base}")
    print(f"adapter (scale {result.scale:g}): {result.adapter}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; heavy modules are imported only by the command that needs them."""
    if args.command == "convert":
        options = {k: v for k, v in (("dtype", args.dtype), ("name", args.name), ("svd_rank", args.svd_rank)) if v}
        report: dict = {}
        out = converters.convert(args.src, args.dst, to=args.to, base=args.base, arch=args.arch,
                                 force=args.force, report=report, **options)
        if "svd_worst_rel_error" in report:
            print(f"approximated {report['svd_modules']} module(s) by rank-{args.svd_rank} LoRA; "
                  f"worst relative error {report['svd_worst_rel_error']:.3g} ({report['svd_worst_module']})")
        print(f"wrote {out}")
        return EXIT_OK
    if args.command == "inspect":
        report = converters.inspect_adapter(args.path, base=args.base)
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            _print_inspect(report)
        return EXIT_USER if report.get("base_problems") else EXIT_OK
    if args.command == "train":
        from .runner import train_from_cli

        return train_from_cli(args.config, args.set)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo()
    if args.command == "lint":
        from .data.lint import lint_cli

        return lint_cli(args.dir)
    if args.command == "caption":
        from .data.caption import caption_cli

        return caption_cli(args.dir, args.model, overwrite=args.overwrite, to=args.to)
    if args.command == "upgrade-ggml":
        from .text.ggml_upgrade import upgrade_ggml_cli

        return upgrade_ggml_cli(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "ui":
        from .ui.standalone import launch

        return launch(host=args.host, port=args.port, models_dir=args.models_dir, output_dir=args.output_dir,
                      allow_dirs=args.allow_dir)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lora-bridge``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`lora-bridge inspect X | head`): that is not an error. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except converters.AdapterError as exc:
        print(f"lora-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:  # disk full, read-only, refused, name too long: the user's to fix, one line
        mapped = converters.atomic.user_os_error(exc)
        if mapped is None:
            raise
        print(f"lora-bridge: error: {mapped}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("lora-bridge: interrupted", file=sys.stderr)
        return 130
