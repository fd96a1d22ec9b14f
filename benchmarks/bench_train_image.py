"""Image LoRA training speed: lora-bridge's engine vs a textbook diffusers + PEFT loop.

Both train the same small SD-shaped model (4-level UNet, VAE downsampling by 8, CLIP text
encoder; built in code, saved as a diffusers folder), on the same images, with the same rank,
batch size, optimizer (AdamW) and step count, in fp32 on CPU, in one process. The textbook loop
decodes every image, runs the VAE and the text encoder at every step (as diffusers'
train_text_to_image_lora.py does); ours caches latents and text-encoder outputs when the
augmentations allow. Prints time per step, peak RSS of each phase, and the ratio (goal <= 0.5).

    python benchmarks/bench_train_image.py [--steps 20] [--rounds 2] [--resolution 128]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


class PeakRss:
    """Peak resident set size while the block runs, sampled from /proc/self/statm."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build_small_sd(folder: Path) -> Path:
    """A small SD1-shaped pipeline (real block pattern and VAE factor 8, narrow channels) as a diffusers folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from extension.tiny.sd import build_tokenizer, tiny_vocab

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=128, attention_head_dim=4,
    )
    vae = AutoencoderKL(block_out_channels=(16, 32, 64, 64), layers_per_block=2, norm_num_groups=16,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, sample_size=128)
    vocab, _ = tiny_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=4,
        max_position_embeddings=77, projection_dim=128, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 77
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def textbook_loop(base: Path, data: Path, steps: int, batch: int, rank: int, resolution: int, seed: int) -> list[float]:
    """diffusers' train_text_to_image_lora.py in miniature: VAE and text encoder at every step, fp32, AdamW."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    tokenizer.model_max_length = 77
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = sorted(data.glob("*.png"))
    captions = [p.with_suffix(".txt").read_text() for p in images]
    unet.train()
    times = []
    order = np.random.default_rng(seed)
    for _ in range(steps):
        start = time.perf_counter()
        pick = order.choice(len(images), size=batch, replace=False)
        pixels = torch.stack([
            torch.from_numpy(np.asarray(Image.open(images[i]).convert("RGB").resize((resolution, resolution)),
                                        dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1) for i in pick])
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        ids = tokenizer([captions[i] for i in pick], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        hidden = text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,)).long()
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times


def ours(base: Path, data: Path, out: Path, steps: int, batch: int, rank: int, resolution: int,
         seed: int) -> list[float]:
    """lora-bridge's engine on the same job (attention-only targets, as in the textbook loop)."""
    from extension.config import config_from_dict
    from extension.runner import run_training

    config = config_from_dict(dict(
        base_model=str(base), train_data_dir=str(data), output_dir=str(out), output_name="bench",
        resolution=resolution, min_bucket_reso=resolution, max_bucket_reso=resolution, lora_rank=rank,
        lora_alpha=rank, batch_size=batch, max_train_steps=steps, seed=seed, learning_rate=1e-4,
        unet_target_modules=["to_q", "to_k", "to_v", "to_out.0"], optimizer="adamw", mixed_precision="no",
    ), source="bench")
    stamps: list[float] = []

    def on_event(event) -> None:
        if event.kind in ("start", "step"):
            stamps.append(time.perf_counter())

    result = run_training(config, on_event)
    assert result.status == "done", result.message
    return list(np.diff(stamps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=512, help="side of the source images (photos are usually "
                        "larger than the training resolution)")
    args = parser.parse_args()

    from extension.demo import make_shape_dataset

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_small_sd(tmp / "base")
        data = make_shape_dataset(tmp / "data", size=args.image_size, per_shape=max(1, args.images // 4))
        runs = {
            "textbook": lambda n: textbook_loop(base, data, n, args.batch, args.rank, args.resolution, 0),
            "ours": lambda n: ours(base, data, tmp / f"out{n}", n, args.batch, args.rank, args.resolution, 0),
        }
        # One short run of each first: one-time costs (imports, kernel set-up) must not land on whoever runs first.
        for run in runs.values():
            run(3)
        # Alternate the two in rounds: on a shared machine a burst of load then hits both.
        results = {name: ([], 0) for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                gc.collect()
                with PeakRss() as rss:
                    times = run(args.steps)
                results[name] = (results[name][0] + times[2:], max(results[name][1], rss.peak))
        print(f"small SD1-shaped model, {args.images} images of {args.image_size}px trained at {args.resolution}px, "
              f"batch {args.batch}, rank "
              f"{args.rank}, {args.steps} steps, fp32 AdamW, {torch.get_num_threads()} CPU threads")
        for name, (times, peak) in results.items():
            print(f"  {name:9s} median {np.median(times) * 1000:7.1f} ms/step, mean {np.mean(times) * 1000:7.1f}, "
                  f"peak RSS {peak / 2**20:7.0f} MiB")
        ratio = np.median(results["ours"][0]) / np.median(results["textbook"][0])
        print(f"  time per step ours/textbook: {ratio:.2f} (median; the first 2 steps of each run excluded; "
              f"goal <= 0.5)")


if __name__ == "__main__":
    main()
