"""GPU check: both engines on full-size random models on CUDA, with ratios and a pass/fail exit code.

Run through ``benchmarks/gpu_check.sh`` (a few minutes on one GPU, nothing downloaded):

1. Image: a full-size SD1.5 (860M UNet, VAE, 123M CLIP text encoder; random weights built in
   code, saved as a diffusers folder) trained at 512 px, batch 1, rank 8, AdamW, with fp16 and
   with bf16 mixed precision, by lora-bridge's engine and by the textbook diffusers + PEFT loop
   (diffusers' train_text_to_image_lora.py: frozen weights in the half dtype, LoRA in fp32,
   autocast, GradScaler for fp16, VAE and text encoder run every step). Prints it/s and peak VRAM
   (``torch.cuda.max_memory_allocated`` above what was allocated before) and ours/textbook ratios.
2. Text: a LLaMA-2-7B-shaped Q4_0 GGUF (random blocks, ``q4_builder.py``) trained by the text
   engine at the articles' settings (rank 16, batch 4, 64 tokens). Prints s/step and peak VRAM,
   and checks that every Q4_0 dequantization ran on CUDA with torch ops (a probe on
   ``quant.dequant_backend``; the compiled CPU helper must never be called), with the CUDA
   kernel time of torch's bitwise ops in a profiled step as a second witness.

3. Flux.1: a full-size random Flux.1 dev transformer stored as float8 (``fp8_base``) and as a city96
   GGUF Q4_0, trained at 512 px with gradient checkpointing (``flux_gpu_check.py``): s/step, peak VRAM.
Fails (exit 1) on a wrong result: a loss that is not finite, a text loss that does not fall, an
adapter that does not load or did not train, a dequantization off the GPU, or a ratio beyond the
thresholds (``--min-speed``, ``--max-vram``, ``--max-text-vram``). Exit 77: no CUDA device, nothing measured.

``--dry-run`` runs the same logic on the CPU with tiny models (1-2 minutes on 2 cores): it exercises
the script, not the GPU. ``--size full`` with ``--dry-run`` uses the full-size shapes on the CPU (slow, heavy).
"""

from __future__ import annotations

import argparse
import collections
import gc
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

EXIT_FAILED, EXIT_NO_CUDA = 1, 77
IMAGE_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
WARMUP_STEPS = 3  # first steps: cuDNN autotuning, allocator growth, caches filling


# -- bookkeeping ---------------------------------------------------------------------------------


@dataclass
class Checks:
    """Pass/fail lines; ``failures`` decides the exit code."""

    failures: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok


class PeakMemory:
    """Peak memory of a block above its start: CUDA allocations on a GPU, resident set size on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = False

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            import threading

            self._base = self._rss()
            self.peak = self._base
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop = True
            self._thread.join()
        self.peak = max(0, self.peak - self._base)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_training(config, callback):
    """The one training entry point (``extension/runner.py`` since #13, ``extension/training/runner.py`` before)."""
    try:
        from extension.runner import run_training as run
    except ImportError:
        from extension.training.runner import run_training as run
    return run(config, callback)


def _step_times(stamps: list[float]) -> list[float]:
    """Durations between consecutive step events, warm-up steps dropped (at least one kept)."""
    times = list(np.diff(stamps))
    return times[WARMUP_STEPS:] or times[-1:]


# -- image: full-size SD1.5 ----------------------------------------------------------------------


def build_sd15(folder: Path, device: torch.device, full: bool) -> Path:
    """A random SD1.5 as a diffusers folder: full-size shapes (built on ``device``), or the tiny test model."""
    if not full:
        from extension.tiny.sd import save_tiny_sd_pipeline

        return save_tiny_sd_pipeline("sd1", folder)
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from extension.tiny.sd import build_tokenizer, scheduler_for, tiny_vocab

    vocab, _ = tiny_vocab()
    torch.manual_seed(0)
    with torch.device(device):  # random init of 1B parameters is seconds on a GPU, a minute on a CPU
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                    cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"]))
    parts = [m.to("cpu").eval() for m in (unet, vae, text_encoder)]
    pipe = StableDiffusionPipeline(unet=parts[0], vae=parts[1], text_encoder=parts[2], tokenizer=build_tokenizer(),
                                   scheduler=scheduler_for("sd1"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def image_ours(base: Path, data: Path, out: Path, precision: str, steps: int, resolution: int,
               rank: int) -> dict:
    """lora-bridge's image engine on the job; step times, losses and the adapter file."""
    from extension.config import config_from_dict

    config = config_from_dict(dict(
        base_model=str(base), train_data_dir=str(data), output_dir=str(out), output_name=f"gpu-check-{precision}",
        resolution=resolution, min_bucket_reso=resolution, max_bucket_reso=resolution, lora_rank=rank,
        lora_alpha=rank, batch_size=1, max_train_steps=steps, seed=0, learning_rate=1e-4,
        unet_target_modules=IMAGE_TARGETS, optimizer="adamw", mixed_precision=precision, save_precision="fp32",
    ), source="gpu_check")
    stamps: list[float] = []
    losses: list[float] = []

    def on_event(event) -> None:
        if event.kind in ("start", "step"):
            stamps.append(time.perf_counter())
        if event.kind == "step":
            losses.append(float(event.loss))

    result = run_training(config, on_event)
    files = [Path(p) for p in result.output_files if str(p).endswith(".safetensors")]
    return {"status": result.status, "message": result.message, "times": _step_times(stamps), "losses": losses,
            "adapter": files[-1] if files else None}


def image_textbook(base: Path, data: Path, precision: str, steps: int, resolution: int, rank: int,
                   device: torch.device) -> dict:
    """diffusers' train_text_to_image_lora.py in miniature, with its mixed-precision handling."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    cuda = device.type == "cuda"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if not cuda and precision == "fp16":
        amp_dtype = None  # as our engine: no fp16 autocast on the CPU
    weight_dtype = amp_dtype if cuda else torch.float32
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(device, weight_dtype)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=IMAGE_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # diffusers' cast_training_params
    modules = sum(1 for name, _ in unet.named_modules() if name.endswith(".lora_A"))
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if cuda and precision == "fp16" else None
    images = sorted(data.glob("*.png"))
    captions = [p.with_suffix(".txt").read_text() for p in images]
    order = np.random.default_rng(0)
    unet.train()
    stamps, losses = [time.perf_counter()], []
    for _ in range(steps):
        i = int(order.integers(len(images)))
        pixels = np.asarray(Image.open(images[i]).convert("RGB").resize((resolution, resolution)), dtype=np.float32)
        pixels = torch.from_numpy(pixels.transpose(2, 0, 1)[None] / 127.5 - 1).to(device, weight_dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            ids = tokenizer([captions[i]], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            hidden = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device).long()
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            pred = unet(noisy, t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # also waits for the GPU
        stamps.append(time.perf_counter())
    del unet, vae, text_encoder, optimizer, params
    return {"times": _step_times(stamps), "losses": losses, "modules": modules}


def check_image_adapter(path: Path | None, modules_expected: int, checks: Checks, label: str) -> None:
    """The saved kohya LoRA loads, has the textbook's module count, is finite and has trained (up != 0)."""
    if not checks.expect(path is not None and path.is_file(), f"{label}: adapter file written ({path})"):
        return
    from extension._converters import converters

    adapter = converters.load_adapter(path)
    ups = [np.asarray(m.up, dtype=np.float32) for m in adapter.modules.values()]
    downs = [np.asarray(m.down, dtype=np.float32) for m in adapter.modules.values()]
    checks.expect(len(adapter.modules) == modules_expected,
                  f"{label}: {len(adapter.modules)} LoRA modules, textbook PEFT wraps {modules_expected}")
    checks.expect(all(np.isfinite(a).all() for a in ups + downs), f"{label}: adapter weights finite")
    checks.expect(any(np.abs(u).max() > 0 for u in ups), f"{label}: adapter trained (some up weight non-zero)")


def run_image(args: argparse.Namespace, device: torch.device, work: Path, checks: Checks) -> list[str]:
    from extension.demo import make_shape_dataset

    full = args.size == "full"
    print(f"\n== image: {'full-size' if full else 'tiny'} random SD1.5, {args.resolution} px, batch 1, rank "
          f"{args.rank}, AdamW, {args.image_steps} steps (first {WARMUP_STEPS} not timed)", flush=True)
    start = time.perf_counter()
    base = build_sd15(work / "sd15", device, full)
    data = make_shape_dataset(work / "images", size=args.resolution, per_shape=2)
    print(f"  built base and 8 images in {time.perf_counter() - start:.0f} s", flush=True)
    summary = []
    for precision in args.precisions:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print(f"  bf16: skipped, {torch.cuda.get_device_name()} has no bf16 support")
            continue
        with PeakMemory(device) as mem:
            ours = image_ours(base, data, work / f"out-{precision}", precision, args.image_steps, args.resolution,
                              args.rank)
        ours_peak = mem.peak
        _free(device)
        with PeakMemory(device) as mem:
            book = image_textbook(base, data, precision, args.image_steps, args.resolution, args.rank, device)
        book_peak = mem.peak
        _free(device)
        label = f"image {precision}" + (" (fp32: no fp16 autocast on the CPU)" if precision == "fp16"
                                          and device.type != "cuda" else "")
        checks.expect(ours["status"] == "done", f"{label}: our run finished ({ours['status']}: {ours['message']})")
        checks.expect(len(ours["losses"]) == args.image_steps and all(math.isfinite(v) for v in ours["losses"]),
                      f"{label}: our {len(ours['losses'])} losses finite "
                      f"(first {ours['losses'][0] if ours['losses'] else float('nan'):.4f}, "
                      f"last {ours['losses'][-1] if ours['losses'] else float('nan'):.4f})")
        if not all(math.isfinite(v) for v in book["losses"]):
            print(f"  [note] {label}: the textbook loop's loss is not finite: its ratio means little")
        check_image_adapter(ours["adapter"], book["modules"], checks, label)
        ours_its, book_its = 1 / float(np.median(ours["times"])), 1 / float(np.median(book["times"]))
        speed, vram = ours_its / book_its, ours_peak / max(1, book_peak)
        what = "peak VRAM" if device.type == "cuda" else "peak RSS"
        line = (f"{label}: ours {ours_its:.2f} it/s, {what} {_gib(ours_peak)} | textbook {book_its:.2f} it/s, "
                f"{_gib(book_peak)} | ours/textbook: speed {speed:.2f}x, memory {vram:.2f}x")
        print("  " + line, flush=True)
        summary.append(line)
        if device.type == "cuda":
            checks.expect(speed >= args.min_speed, f"{label}: speed ratio {speed:.2f} >= {args.min_speed}")
            checks.expect(vram <= args.max_vram, f"{label}: VRAM ratio {vram:.2f} <= {args.max_vram}")
    return summary


# -- text: 7B-shaped Q4_0 ------------------------------------------------------------------------


class DequantProbe:
    """Records every dequantization dispatch (type, device, backend) and every call of the compiled CPU helper."""

    def __init__(self) -> None:
        self.dispatch: collections.Counter = collections.Counter()
        self.native_calls = 0

    def __enter__(self) -> DequantProbe:
        from extension.text import native, quant

        self._quant, self._native = quant, native
        self._backend, self._into = quant.dequant_backend, native.NativeDequantizer.into
        probe, backend, into = self, self._backend, self._into

        def recording_backend(qtype, device):
            choice = backend(qtype, device)
            probe.dispatch[(qtype.name, torch.device(device).type, choice)] += 1
            return choice

        def counting_into(helper, *args, **kwargs):
            probe.native_calls += 1
            return into(helper, *args, **kwargs)

        quant.dequant_backend = recording_backend
        native.NativeDequantizer.into = counting_into
        return self

    def __exit__(self, *exc: object) -> None:
        self._quant.dequant_backend = self._backend
        self._native.NativeDequantizer.into = self._into


class StepProfiler:
    """torch.profiler around one training step (between two step events); totals of torch's bitwise ops."""

    def __init__(self, device: torch.device, at_step: int) -> None:
        self.device, self.at_step = device, at_step
        self.prof = None
        self.table = ""
        self.bitwise_device_us = 0.0
        self.bitwise_cpu_us = 0.0
        self.error = ""

    def on_step(self, step: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        try:
            if step == self.at_step - 1:
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
                self.prof = profile(activities=acts)
                self.prof.__enter__()
            elif step == self.at_step and self.prof is not None:
                self.prof.__exit__(None, None, None)
                self._summarise()
        except Exception as exc:  # profiler unavailable (no CUPTI): the dispatch probe still decides
            self.error = f"{exc.__class__.__name__}: {exc}"

    def _summarise(self) -> None:
        events = self.prof.key_averages()
        cuda = self.device.type == "cuda"
        for evt in events:
            if "bitwise" in evt.key:
                device_us = getattr(evt, "device_time_total", None)
                if device_us is None:
                    device_us = getattr(evt, "cuda_time_total", 0.0)
                self.bitwise_device_us += float(device_us or 0.0)
                self.bitwise_cpu_us += float(evt.cpu_time_total)
        sort = "device_time_total" if cuda else "cpu_time_total"
        try:
            self.table = events.table(sort_by=sort, row_limit=8)
        except Exception:  # older torch spells it cuda_time_total
            self.table = events.table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=8)


def check_dequant_values(base: Path, device: torch.device, checks: Checks) -> None:
    """Q4_0 dequantized on ``device`` by the engine's own dispatch equals torch's CPU reference bit for bit."""
    from gguf import GGMLQuantizationType, GGUFReader

    from extension.text import quant

    reader = GGUFReader(str(base))
    picked = [t for t in reader.tensors if t.name in ("token_embd.weight", "blk.0.ffn_down.weight")]
    for t in picked:
        cols, rows = int(t.shape[0]), int(t.shape[1])
        raw = torch.from_numpy(np.array(t.data).reshape(rows, -1))  # a copy: the map is read-only
        reference = quant.dequantize_rows(raw, GGMLQuantizationType.Q4_0, cols, native=False)
        got = quant.dequantize_rows(raw.to(device), GGMLQuantizationType.Q4_0, cols).cpu()
        backend = quant.dequant_backend(GGMLQuantizationType.Q4_0, device)
        checks.expect(torch.equal(got.view(torch.int32), reference.view(torch.int32)),
                      f"text: {t.name} ({rows}x{cols}) dequantized by {backend} on {device.type} equals the CPU "
                      "reference bit for bit")
    del reader
    quant.release_buffers()  # its scratch space must not count as the training run's baseline


def text_samples(path: Path, n: int, words: int) -> Path:
    """``n`` lines of ``words`` vocabulary pieces each (about ``words`` tokens)."""
    rng = np.random.default_rng(0)
    pieces = ["the", "cat", "sat", "on", "mat", "dog", "ran", "to", "and"] + [f"tok{i}" for i in range(150)]
    lines = [" ".join(pieces[j] for j in rng.integers(len(pieces), size=words)) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_text(args: argparse.Namespace, device: torch.device, work: Path, checks: Checks) -> list[str]:
    from q4_builder import LLAMA2_7B, TINY, write_random_q4_gguf

    from extension._converters import converters
    from extension.config import config_from_dict

    shape = LLAMA2_7B if args.size == "full" else TINY
    if args.text_layers:
        shape = shape.smaller(args.text_layers)
    print(f"\n== text: random Q4_0 LLaMA ({shape.layers} layers, hidden {shape.hidden}, FFN {shape.intermediate}, "
          f"vocab {shape.vocab}), rank {args.rank_text}, batch 4, {args.tokens} tokens, {args.text_steps} steps",
          flush=True)
    start = time.perf_counter()
    base = write_random_q4_gguf(work / "llama-q4_0.gguf", shape)
    data = text_samples(work / "text.txt", 4, args.tokens - 2)
    file_bytes = base.stat().st_size
    print(f"  wrote {base.name} ({file_bytes / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s", flush=True)
    check_dequant_values(base, device, checks)
    _free(device)
    config = config_from_dict(dict(
        task_type="text-generation", base_model=str(base), train_data_dir=str(data), output_dir=str(work / "text-out"),
        output_name="gpu-check-text", lora_rank=args.rank_text, lora_alpha=args.rank_text, batch_size=4,
        max_length=args.tokens, max_train_steps=args.text_steps, seed=0, learning_rate=args.text_lr,
        optimizer="adamw", llama_cpp_check="off", lr_scheduler="constant",
    ), source="gpu_check")
    stamps: list[float] = []
    losses: list[float] = []
    profiler = StepProfiler(device, at_step=min(2, args.text_steps))

    def on_event(event) -> None:
        if event.kind in ("start", "step"):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
        if event.kind == "step":
            losses.append(float(event.loss))
        if event.kind in ("start", "step") and not args.no_profile:
            profiler.on_step(int(event.step) if event.kind == "step" else 0)

    with DequantProbe() as probe, PeakMemory(device) as mem:
        result = run_training(config, on_event)
    times = _step_times(stamps)
    first_line = result.message.splitlines()[0] if result.message else ""
    checks.expect(result.status == "done", f"text: run finished ({result.status}: {first_line})")
    checks.expect(len(losses) == args.text_steps and all(math.isfinite(v) for v in losses),
                  f"text: {len(losses)} losses finite ({', '.join(f'{v:.4f}' for v in losses)})")
    first, last = (losses[0], losses[-1]) if losses else (math.nan, math.nan)
    checks.expect(len(losses) >= 2 and last < first, f"text: loss falls on the repeated batch (first {first:.4f}, "
                  f"last {last:.4f})")
    peft = [Path(p) for p in result.output_files if Path(p).is_dir()]
    if checks.expect(bool(peft), f"text: PEFT folder written ({peft[0] if peft else None})"):
        adapter = converters.load_adapter(peft[0])
        expected = shape.layers * 7
        checks.expect(len(adapter.modules) == expected,
                      f"text: {len(adapter.modules)} LoRA modules (expected {expected})")
        ups = [np.asarray(m.up, dtype=np.float32) for m in adapter.modules.values()]
        checks.expect(all(np.isfinite(u).all() for u in ups) and any(np.abs(u).max() > 0 for u in ups),
                      "text: adapter finite and trained (some lora_B non-zero)")
    print("  dequantization dispatches (type, device, backend): "
          + ", ".join(f"{k[0]}/{k[1]}/{k[2]} x{v}" for k, v in sorted(probe.dispatch.items())), flush=True)
    print(f"  compiled CPU helper calls: {probe.native_calls}")
    q4 = {k: v for k, v in probe.dispatch.items() if k[0] == "Q4_0"}
    checks.expect(bool(q4), "text: Q4_0 dequantization seen by the probe")
    checks.expect(all(k[1] == device.type for k in q4), f"text: every Q4_0 dequantization on {device.type}")
    if device.type == "cuda":
        checks.expect(all(k[2] == "torch" for k in q4), "text: every Q4_0 dequantization by torch ops on the GPU")
        checks.expect(probe.native_calls == 0, "text: compiled CPU dequantizer never called")
    if profiler.error:
        print(f"  [note] profiler unavailable: {profiler.error}")
    elif profiler.table:
        where = "CUDA" if device.type == "cuda" else "CPU"
        spent = profiler.bitwise_device_us if device.type == "cuda" else profiler.bitwise_cpu_us
        print(f"  profiled step {profiler.at_step}: torch bitwise ops (Q4_0 nibble unpacking) {spent / 1e3:.1f} ms "
              f"of {where} time; top ops:\n" + "\n".join("    " + row for row in profiler.table.splitlines()))
        if device.type == "cuda":
            checks.expect(profiler.bitwise_device_us > 0, "text: profiler shows bitwise (unpacking) kernels on CUDA")
    s_step = float(np.median(times)) if times else float("nan")
    what = "peak VRAM" if device.type == "cuda" else "peak RSS"
    fp16_bytes = 2 * (sum(r * c for _, r, c in shape.matrices()) + sum(n for _, n in shape.vectors()))
    line = (f"text: {s_step:.2f} s/step, {what} {_gib(mem.peak)} = {mem.peak / file_bytes:.2f}x the "
            f"{file_bytes / 2**30:.2f} GiB file, {mem.peak / fp16_bytes:.2f}x the {_gib(fp16_bytes)} its weights "
            "take in fp16 alone")
    print("  " + line, flush=True)
    if device.type == "cuda":  # a float copy of the weights would be 3.6x (fp16) or 7x (fp32) the Q4_0 file alone
        checks.expect(mem.peak <= args.max_text_vram * file_bytes,
                      f"text: peak VRAM {mem.peak / file_bytes:.2f}x the file <= {args.max_text_vram}x")
    return [line]


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU with tiny models (exercises the logic)")
    parser.add_argument("--size", choices=("full", "tiny"), default=None,
                        help="model shapes (default: full on CUDA, tiny with --dry-run)")
    parser.add_argument("--skip-image", action="store_true")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--skip-flux", action="store_true")
    parser.add_argument("--flux-steps", type=int, default=None, help="default 8 (3 when tiny)")
    parser.add_argument("--precisions", default="fp16,bf16", help="image mixed precisions, comma-separated")
    parser.add_argument("--resolution", type=int, default=None, help="image px (default 512; 64 when tiny)")
    parser.add_argument("--image-steps", type=int, default=None, help="default 25 (6 when tiny)")
    parser.add_argument("--rank", type=int, default=8, help="image LoRA rank")
    parser.add_argument("--text-steps", type=int, default=None, help="default 6 (4 when tiny)")
    parser.add_argument("--text-layers", type=int, default=0, help="fewer decoder layers (0: all)")
    parser.add_argument("--rank-text", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per text sample")
    parser.add_argument("--text-lr", type=float, default=1e-3)
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled text step")
    parser.add_argument("--min-speed", type=float, default=0.9, help="fail if ours/textbook it/s is below (CUDA)")
    parser.add_argument("--max-vram", type=float, default=1.2, help="fail if ours/textbook peak VRAM is above (CUDA)")
    parser.add_argument("--max-text-vram", type=float, default=3.0,
                        help="fail if the text run's peak VRAM is above this multiple of the Q4_0 file (CUDA)")
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed; "
                        "needs ~9 GB at full size)")
    args = parser.parse_args(argv)
    tiny = (args.size or ("tiny" if args.dry_run else "full")) == "tiny"
    args.size = "tiny" if tiny else "full"
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in args.precisions if p not in ("fp16", "bf16")]
    if bad:
        parser.error(f"--precisions: {bad} not among fp16, bf16")
    args.resolution = args.resolution or (64 if tiny else 512)
    args.image_steps = args.image_steps or (WARMUP_STEPS + 3 if tiny else 25)
    args.text_steps = args.text_steps or (4 if tiny else 6)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False"
              f"{'' if torch.version.cuda else '; this torch build has no CUDA'}): nothing was measured. Run it on "
              "a machine with an NVIDIA GPU, or pass --dry-run to exercise the script on the CPU.", file=sys.stderr)
        return EXIT_NO_CUDA
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        gpu = f"CPU dry run ({os.cpu_count()} cores): the logic only, no GPU figures"
    print(f"gpu_check: torch {torch.__version__}, python {platform.python_version()}, {gpu}; {args.size} models",
          flush=True)
    started = time.perf_counter()
    checks = Checks()
    summary: list[str] = []
    keep = args.work_dir is not None
    work = Path(args.work_dir) if keep else Path(tempfile.mkdtemp(prefix="lora-bridge-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_image:
            summary += run_image(args, device, work, checks)
        if not args.skip_text:
            summary += run_text(args, device, work, checks)
        if not args.skip_flux:
            from flux_gpu_check import run_flux

            summary += run_flux(args, device, work, checks, PeakMemory, run_training)
    except Exception as exc:  # a crash is a failed check, reported as one line plus the traceback above it
        import traceback

        traceback.print_exc()
        checks.failures.append(f"crashed: {exc.__class__.__name__}: {exc}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n== summary ({time.perf_counter() - started:.0f} s)")
    for line in summary:
        print("  " + line)
    if checks.failures:
        print(f"GPU CHECK FAILED: {len(checks.failures)} problem(s):")
        for what in checks.failures:
            print("  - " + what)
        return EXIT_FAILED
    print("GPU CHECK PASSED" if device.type == "cuda" else "DRY RUN PASSED (CPU: the logic only, no GPU figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
