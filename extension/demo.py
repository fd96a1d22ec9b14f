"""``lora-bridge demo``: train an image LoRA on a tiny SD1 model built in code, offline, on CPU.

Writes everything under ``./lora-bridge-demo/``: the tiny base checkpoint (A1111 single-file
layout with its ``.yaml`` and tokenizer beside it), a generated dataset of coloured shapes with
captions, the kohya LoRA, before/after samples. Then runs the text demo when it is installed.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_DIR = "lora-bridge-demo"
NAME = "demo_shapes"
_SHAPES = [
    ("red", (220, 30, 30), "circle"),
    ("blue", (30, 60, 220), "square"),
    ("green", (30, 180, 60), "circle"),
    ("yellow", (230, 200, 20), "square"),
]


def make_shape_dataset(folder: Path, size: int = 64, per_shape: int = 2) -> Path:
    """Coloured circles and squares on white with ``.txt`` captions (``a red circle``)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for colour, rgb, shape in _SHAPES:
        for k in range(per_shape):
            image = Image.new("RGB", (size, size), (255, 255, 255))
            draw = ImageDraw.Draw(image)
            pad = 8 + 4 * k
            box = (pad, pad, size - pad, size - pad)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
            stem = f"{n:02d}_{colour}_{shape}"
            image.save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text(f"a {colour} {shape}", encoding="utf-8")
            n += 1
    return folder


def build_demo_base(folder: Path) -> Path:
    """The tiny SD1 base as a WebUI-style checkpoint with its LDM yaml and tokenizer sidecar."""
    from .tiny.sd import write_tokenizer_files
    from .tiny.sd_checkpoint import save_tiny_sd_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny-sd1.safetensors"
    if not path.exists():
        save_tiny_sd_checkpoint("sd1", path, seed=0)
    write_tokenizer_files(folder / "tiny-sd1.tokenizer")
    return path


def demo_config(workdir: Path, base: Path, data: Path):
    """The training config of the demo (also written as ``demo.yaml`` for ``lora-bridge train``)."""
    from .config import config_from_dict

    return config_from_dict({
        "base_model": str(base),
        "train_data_dir": str(data),
        "output_dir": str(workdir / "output"),
        "output_name": NAME,
        "resolution": 64,
        "min_bucket_reso": 64,
        "max_bucket_reso": 64,
        "lora_rank": 4,
        "lora_alpha": 4,
        "learning_rate": 2e-3,
        "batch_size": 2,
        "max_train_steps": 40,
        "save_steps": 20,
        "seed": 1,
        "sample_every_n_steps": 40,
        "sample_prompts": [f"a red circle <lora:{NAME}:1>", f"a blue square <lora:{NAME}:1>"],
        "sample_steps": 6,
        "sample_guidance_scale": 3.0,
    }, source="demo")


def run_demo(workdir: str | Path | None = None) -> int:
    """Run the whole demo; returns the exit code."""
    from .config import dump_config_yaml
    from .image.samples import render_samples
    from .models.sd_loader import load_sd_base
    from .runner import run_training
    from .training.progress import TqdmSink

    started = time.time()
    workdir = Path(workdir or Path.cwd() / DEMO_DIR).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"lora-bridge demo: working in {workdir}")
    base = build_demo_base(workdir / "base")
    data = make_shape_dataset(workdir / "dataset")
    config = demo_config(workdir, base, data)
    (workdir / "demo.yaml").write_text(dump_config_yaml(config, only_task=True), encoding="utf-8")

    before_base = load_sd_base(base)
    before = render_samples(before_base, config.sample_prompts, Path(config.output_dir) / "samples", "before",
                            size=64, steps=config.sample_steps, guidance=config.sample_guidance_scale,
                            seed=config.seed)
    del before_base
    after: list[str] = []

    def keep_samples(event) -> None:
        if event.kind == "sample":
            after[:] = event.paths

    from .training.progress import fan_out

    result = run_training(config, fan_out(TqdmSink(desc="image LoRA"), keep_samples))
    if result.status != "done":
        print(f"lora-bridge demo: image training ended: {result.status} {result.message}")
        return 1
    final = Path(config.output_dir) / f"{NAME}.safetensors"
    print()
    print(f"Image LoRA: {final}  (loss {result.final_loss:.4f} after {result.steps} steps)")
    print(f"Samples before: {', '.join(before)}")
    print(f"Samples after:  {', '.join(after)}")
    print("(the demo base is a random tiny model, so its samples are noise; what matters is that the LoRA file, "
          "samples and metadata come out exactly as with a real checkpoint)")
    print("In the WebUI: copy the file into models/Lora and add to a prompt:")
    print(f"    a red circle <lora:{NAME}:0.7>")
    print(f"(it was trained on a tiny demo model; for a real LoRA run `lora-bridge train --config "
          f"{workdir / 'demo.yaml'}` with base_model set to your checkpoint)")
    _text_demo(workdir)
    print(f"lora-bridge demo: done in {time.time() - started:.0f} s; everything is in {workdir}")
    return 0


def _text_demo(workdir: Path) -> None:
    """The text part, when ``extension/text/demo.py`` provides ``run_text_demo``."""
    try:
        from .text.demo import run_text_demo
    except ImportError:
        return
    print()
    run_text_demo(workdir)
