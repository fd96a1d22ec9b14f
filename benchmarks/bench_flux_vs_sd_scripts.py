"""Flux.1 LoRA training: ours against kohya sd-scripts' ``flux_train_network.py`` on the same files, one run.

sd-scripts hard-codes Flux.1's widths (transformer 3072, CLIP-L, T5-XXL 4096, the 16-channel VAE) and reads
only the transformer's depth from the file, so the shared base is full width with few blocks (default
1 double + 2 single), random weights, saved as a bf16 BFL file; CLIP-L and the VAE are full size, T5-XXL is
full width with ``--t5-layers`` blocks (fp16). Both sides get the same images and captions, the same tiny
tokenizers (ours through ``tokenizer_path``, sd-scripts through ``--tokenizer_cache_dir``) and the same
settings: rank 16, alpha 16, batch 1, AdamW, lr 1e-4 constant, timestep_sampling shift (3.0), raw
prediction, guidance 1.0, latents and text-encoder outputs cached, UNet/transformer only.

Each side runs in a child process of its own per variant (fp8 base on/off, gradient checkpointing on/off);
the parent prints s/step (median over the optimizer steps after the first), the peak RSS of the whole
run (the kernel's high-water mark) and the largest RSS seen at an optimizer step (the training loop),
and ours / sd-scripts for each. Then both LoRA files are read with our reader, and sd-scripts' file with
our kohya reader, which must leave no key unknown.

    python benchmarks/bench_flux_vs_sd_scripts.py --sd-scripts /path/to/sd-scripts \\
        --sd-scripts-python /path/to/venv/bin/python [--steps 6] [--variants ...]

Two changes around sd-scripts, made in its child (nothing on disk): torchvision is imported with its
compiled ops left out (PyPI's torchvision wheels link CUDA torch, so they do not load under the CPU torch
and the import stops; sd-scripts uses only torchvision's Python transforms), and ``flux_utils.load_t5xxl``
builds T5 with the file's number of blocks instead of its hard-coded 24 (a full T5-XXL is 4.7 B parameters,
which our loader would upcast to float32: 19 GB). sd-scripts refuses ``--fp8_base`` without mixed precision, so its
fp8 variants run ``--mixed_precision bf16``; the others run ``--sd-mixed-precision`` (bf16: transformer stored
bf16 and bf16 autocast; no: float32 storage and math). Ours runs mixed_precision ``no`` throughout (its CPU
default: frozen weights stored bf16 or fp8, upcast layer by layer, float32 math).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

SETTINGS = dict(rank=16, alpha=16, lr=1e-4, shift=3.0, guidance=1.0, seed=0)
VARIANTS = {
    "bf16 base": {},
    "fp8 base": {"fp8_base": True},
    "fp8 base + checkpointing": {"fp8_base": True, "gradient_checkpointing": True},
    "bf16 base + checkpointing": {"gradient_checkpointing": True},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd-scripts", type=Path, help="sd-scripts checkout (holds flux_train_network.py)")
    parser.add_argument("--sd-scripts-python", type=Path, help="python of a venv with sd-scripts' requirements")
    parser.add_argument("--double", type=int, default=1, help="double blocks of the reduced transformer")
    parser.add_argument("--single", type=int, default=2, help="single blocks")
    parser.add_argument("--t5-layers", type=int, default=1, help="T5-XXL blocks (full width)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--t5-tokens", type=int, default=64, help="t5xxl_max_token_length of both sides")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--sd-mixed-precision", default="bf16", choices=["bf16", "no"],
                        help="sd-scripts' --mixed_precision for the variants without fp8 (fp8 needs bf16)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sides", nargs="*", default=["sd-scripts", "ours"], choices=["sd-scripts", "ours"])
    parser.add_argument("--work", type=Path, default=None, help="folder for the files (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child-ours", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-sd-scripts", nargs=2, metavar=("SD_SCRIPTS", "OUT"), help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.rest = argv[cut + 1:]  # sd-scripts' own command line (a child's)
    return args


# --- files ------------------------------------------------------------------------------------------------

def build_files(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The reduced full-width transformer, full CLIP-L and VAE, the reduced T5, tokenizers and the dataset."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from diffusers import FluxTransformer2DModel
    from flux_random_checkpoint import write_ae, write_clip_l, write_t5xxl_fp8

    from extension.demo import make_shape_dataset
    from extension.models.flux_weights import diffusers_to_bfl
    from extension.tiny.flux import save_safetensors, t5_tokenizer
    from extension.tiny.sd import write_tokenizer_files

    work.mkdir(parents=True, exist_ok=True)
    files = {"base_model": work / f"flux-3072-d{args.double}-s{args.single}-bf16.safetensors",
             "clip_l": work / "clip_l.safetensors", "t5xxl": work / f"t5xxl-{args.t5_layers}layer_fp16.safetensors",
             "ae": work / "ae.safetensors", "tokenizers": work / "tokenizers", "data": work / "data"}
    if not files["base_model"].exists():
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: half the memory of a float32 copy
        try:
            model = FluxTransformer2DModel(num_layers=args.double, num_single_layers=args.single, guidance_embeds=True)
        finally:
            torch.set_default_dtype(torch.float32)
        save_safetensors(diffusers_to_bfl(model.state_dict()), files["base_model"], torch.bfloat16)
        del model
    if not files["clip_l"].exists():
        write_clip_l(files["clip_l"])
    if not files["t5xxl"].exists():
        write_t5xxl_fp8(files["t5xxl"], layers=args.t5_layers, fp8=False)
    if not files["ae"].exists():
        write_ae(files["ae"])
    tok = files["tokenizers"]
    write_tokenizer_files(tok / "tokenizer")
    t5_tokenizer().save_pretrained(str(tok / "tokenizer_2"))
    # transformers 5 writes extra_special_tokens as a list; sd-scripts' transformers 4.54 wants a mapping
    config_path = tok / "tokenizer_2" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("extra_special_tokens", None)
    config_path.write_text(json.dumps(config, indent=2))
    # sd-scripts' --tokenizer_cache_dir names its folders after the hub ids (strategy_base._load_tokenizer)
    for sub, hub in (("tokenizer", "openai_clip-vit-large-patch14"), ("tokenizer_2", "google_t5-v1_1-xxl")):
        shutil.copytree(tok / sub, tok / hub, dirs_exist_ok=True)
    # kohya's DreamBooth layout: <repeats>_<name>/ holding images and .txt captions
    make_shape_dataset(files["data"] / "1_shapes", size=args.resolution, per_shape=1)
    return files


# --- children ---------------------------------------------------------------------------------------------

def _watch_steps(record: dict) -> None:
    """Time stamp and RSS at every optimizer step of any torch optimizer (both sides use torch's AdamW)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(*_):
        record["stamps"].append(time.perf_counter())
        record["step_rss"].append(_status_kib("VmRSS") * 1024)

    register_optimizer_step_post_hook(hook)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _write_record(out: Path, record: dict) -> None:
    record["peak_rss"] = _status_kib("VmHWM") * 1024
    out.write_text(json.dumps(record))


def child_ours(config_path: Path, out: Path) -> None:
    """Train ``config_path`` (YAML) with our runner."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from extension.runner import run_training

    record = {"stamps": [], "step_rss": []}
    _watch_steps(record)
    result = run_training(yaml.safe_load(config_path.read_text()), lambda event: None)
    record.update(status=result.status, message=result.message)
    _write_record(out, record)


def _load_t5xxl_sized_from_file(flux_utils):
    """sd-scripts' ``load_t5xxl`` with the file's block count (its T5-XXL config otherwise, unchanged)."""
    original = flux_utils.load_t5xxl

    def load_t5xxl(ckpt_path, dtype, device, disable_mmap=False, state_dict=None):
        from safetensors import safe_open

        with safe_open(ckpt_path, framework="pt") as handle:
            names = list(handle.keys())  # safe_open's handle is not iterable
        layers = len({k.split(".")[2] for k in names if k.startswith("encoder.block.")})
        if layers == 24:
            return original(ckpt_path, dtype, device, disable_mmap, state_dict)
        import transformers

        real = transformers.T5Config

        def config_with_layers(**kwargs):
            return real(**dict(kwargs, num_layers=layers, num_decoder_layers=layers))

        flux_utils.T5Config = config_with_layers
        try:
            return original(ckpt_path, dtype, device, disable_mmap, state_dict)
        finally:
            flux_utils.T5Config = real

    flux_utils.load_t5xxl = load_t5xxl


def _import_torchvision_without_ops() -> None:
    """Import torchvision whose compiled ops cannot load (PyPI's Linux wheels link CUDA torch's libraries).

    torchvision guards its op registrations on ``extension._has_ops()`` except ``register_fake`` for nms/qnms,
    which then stops the import; those two are skipped here. sd-scripts uses only its Python transforms."""
    import torch.library

    real = torch.library.register_fake

    def register_fake(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn: fn
        return real(op, *args, **kwargs)

    torch.library.register_fake = register_fake
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = real


def child_sd_scripts(sd_scripts: Path, out: Path, argv: list[str]) -> None:
    """Run ``flux_train_network.py`` with ``argv`` as its command line, in this process."""
    import runpy

    os.chdir(sd_scripts)
    sys.path.insert(0, str(sd_scripts))
    _import_torchvision_without_ops()
    from library import flux_utils

    _load_t5xxl_sized_from_file(flux_utils)
    record = {"stamps": [], "step_rss": [], "status": "done", "message": ""}
    _watch_steps(record)
    sys.argv = [str(sd_scripts / "flux_train_network.py"), *argv]
    try:
        runpy.run_path(str(sd_scripts / "flux_train_network.py"), run_name="__main__")
    except BaseException as exc:  # the record says how it ended; the parent prints it (the log has the trace)
        import traceback

        traceback.print_exc()
        record.update(status="failed", message=f"{type(exc).__name__}: {exc}"[:2000])
    _write_record(out, record)


# --- parent -----------------------------------------------------------------------------------------------

def ours_config(files: dict, variant: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    return {"base_model": str(files["base_model"]), "clip_l": str(files["clip_l"]), "t5xxl": str(files["t5xxl"]),
            "ae": str(files["ae"]), "tokenizer_path": str(files["tokenizers"]),
            "train_data_dir": str(files["data"] / "1_shapes"), "output_dir": str(out_dir), "output_name": "ours",
            "resolution": args.resolution, "min_bucket_reso": args.resolution, "max_bucket_reso": args.resolution,
            "lora_rank": SETTINGS["rank"], "lora_alpha": SETTINGS["alpha"], "batch_size": 1,
            "learning_rate": SETTINGS["lr"], "optimizer": "adamw", "lr_scheduler": "constant",
            "max_train_steps": args.steps, "seed": SETTINGS["seed"], "timestep_sampling": "shift",
            "discrete_flow_shift": SETTINGS["shift"], "model_prediction_type": "raw",
            "guidance_scale": SETTINGS["guidance"], "t5xxl_max_token_length": args.t5_tokens,
            "cache_latents": True, "cache_text_encoder_outputs": True, "mixed_precision": "no", "overwrite": True,
            "fp8_base": bool(variant.get("fp8_base")),
            "gradient_checkpointing": bool(variant.get("gradient_checkpointing"))}


def sd_scripts_argv(files: dict, variant: dict, args: argparse.Namespace, out_dir: Path) -> list[str]:
    precision = "bf16" if variant.get("fp8_base") else args.sd_mixed_precision
    argv = ["--pretrained_model_name_or_path", files["base_model"], "--clip_l", files["clip_l"],
            "--t5xxl", files["t5xxl"], "--ae", files["ae"], "--tokenizer_cache_dir", files["tokenizers"],
            "--train_data_dir", files["data"], "--caption_extension", ".txt", "--resolution", args.resolution,
            "--output_dir", out_dir, "--output_name", "sd-scripts", "--save_model_as", "safetensors",
            "--network_module", "networks.lora_flux", "--network_dim", SETTINGS["rank"],
            "--network_alpha", SETTINGS["alpha"], "--network_train_unet_only",
            "--optimizer_type", "AdamW", "--learning_rate", SETTINGS["lr"], "--lr_scheduler", "constant",
            "--max_train_steps", args.steps, "--train_batch_size", 1, "--seed", SETTINGS["seed"],
            "--cache_latents", "--cache_text_encoder_outputs", "--timestep_sampling", "shift",
            "--discrete_flow_shift", SETTINGS["shift"], "--model_prediction_type", "raw",
            "--guidance_scale", SETTINGS["guidance"], "--t5xxl_max_token_length", args.t5_tokens,
            "--mixed_precision", precision, "--max_data_loader_n_workers", 0, "--sdpa"]
    if variant.get("fp8_base"):
        argv.append("--fp8_base")
    if variant.get("gradient_checkpointing"):
        argv.append("--gradient_checkpointing")
    return [str(a) for a in argv]


def run_side(side: str, name: str, files: dict, args: argparse.Namespace, work: Path) -> dict:
    import yaml

    variant = VARIANTS[name]
    out_dir = work / "runs" / side / name.replace(" ", "_").replace("+", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = out_dir / "record.json"
    log = out_dir / "log.txt"
    if side == "ours":
        config = out_dir / "config.yaml"
        config.write_text(yaml.safe_dump(ours_config(files, variant, args, out_dir)))
        command = [sys.executable, __file__, "--child-ours", str(config), str(record)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
    else:
        command = [str(args.sd_scripts_python), __file__, "--child-sd-scripts", str(args.sd_scripts), str(record),
                   "--", *sd_scripts_argv(files, variant, args, out_dir)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    got = json.loads(record.read_text()) if record.exists() else {"status": "failed", "stamps": [], "step_rss": [],
                                                                 "peak_rss": 0}
    if code and got["status"] == "done":
        got["status"] = "failed"
    if not got.get("message") and got["status"] != "done":
        got["message"] = f"exit {code}; see {log}"
    got["lora"] = next(iter(sorted(out_dir.glob("*.safetensors"))), None)
    return got


def summary(got: dict) -> tuple[float, float, float]:
    times = [b - a for a, b in zip(got["stamps"][1:], got["stamps"][2:], strict=False)]
    return (statistics.median(times) if times else float("nan"), got["peak_rss"] / GIB,
            max(got["step_rss"], default=0) / GIB)


def check_lora_files(ours: Path | None, theirs: Path | None) -> list[str]:
    """Both files through our reader; sd-scripts' through the kohya reader (no unknown key) and its layout."""
    sys.path.insert(0, str(ROOT))
    from extension._converters import converters

    lines = []
    adapters = {}
    for label, path in (("ours", ours), ("sd-scripts", theirs)):
        if path is None:
            lines.append(f"{label}: no LoRA file")
            continue
        fmt = converters.formats.detect_format(path)
        adapter = converters.api.load_adapter(path)
        adapters[label] = adapter
        lines.append(f"{label}: {path.name} sniffed as {fmt}, {len(adapter.modules)} modules, "
                     f"arch {adapter.arch}")
    if theirs is not None:
        adapter = converters.formats.FORMATS["kohya"].read(theirs, None)
        lines.append(f"sd-scripts file in our kohya reader: {len(adapter.modules)} modules, 0 unknown keys "
                     "(the reader stops at the first unknown key)")
    if len(adapters) == 2:
        a, b = adapters["ours"], adapters["sd-scripts"]
        names_a, names_b = set(a.modules), set(b.modules)
        shapes = all(a.modules[n].down.shape == b.modules[n].down.shape and a.modules[n].up.shape ==
                     b.modules[n].up.shape for n in names_a & names_b)
        lines.append(f"same modules: {names_a == names_b} ({len(names_a & names_b)} shared, "
                     f"{len(names_a - names_b)} only ours, {len(names_b - names_a)} only sd-scripts); "
                     f"same shapes: {shapes}")
        if names_a != names_b:
            lines.append(f"  only ours: {sorted(names_a - names_b)[:6]}  "
                         f"only sd-scripts: {sorted(names_b - names_a)[:6]}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_ours:
        child_ours(Path(args.child_ours[0]), Path(args.child_ours[1]))
        return 0
    if args.child_sd_scripts:
        child_sd_scripts(Path(args.child_sd_scripts[0]), Path(args.child_sd_scripts[1]), args.rest)
        return 0
    if "sd-scripts" in args.sides and not (args.sd_scripts and args.sd_scripts_python):
        print("error: --sd-scripts and --sd-scripts-python are needed to run sd-scripts", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-flux-sds-"))
    files = build_files(args, work)
    print(f"reduced Flux: width 3072, {args.double} double + {args.single} single blocks "
          f"({files['base_model'].stat().st_size / GIB:.2f} GiB bf16), CLIP-L and VAE full size, T5-XXL "
          f"{args.t5_layers} block(s) fp16; {args.resolution} px, {args.t5_tokens} T5 tokens, {args.steps} steps, "
          f"rank {SETTINGS['rank']}, alpha {SETTINGS['alpha']}, batch 1, AdamW lr {SETTINGS['lr']}; "
          f"ours mixed_precision no, sd-scripts {args.sd_mixed_precision} (fp8: bf16)", flush=True)
    loras = {}
    for name in args.variants:
        rows = {}
        for side in args.sides:
            got = run_side(side, name, files, args, work)
            if got["status"] != "done":
                print(f"{name} / {side}: {got['status']}: {got.get('message')}", flush=True)
                continue
            rows[side] = summary(got)
            loras.setdefault(side, got["lora"])
            s_step, peak, loop = rows[side]
            print(f"{name:26s} {side:10s} {s_step:7.2f} s/step   peak RSS {peak:6.2f} GiB   "
                  f"RSS at steps {loop:6.2f} GiB", flush=True)
        if len(rows) == 2:
            (t_o, p_o, l_o), (t_s, p_s, l_s) = rows["ours"], rows["sd-scripts"]
            print(f"{name:26s} ours/sd-scripts: time {t_o / t_s:.2f}x, peak RSS {p_o / p_s:.2f}x, "
                  f"RSS at steps {l_o / l_s:.2f}x", flush=True)
    for line in check_lora_files(loras.get("ours"), loras.get("sd-scripts")):
        print(line)
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
