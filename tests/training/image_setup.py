"""Helpers shared by the image-training tests (a module of its own: every test folder has a `conftest`)."""

from __future__ import annotations

from pathlib import Path


def tiny_checkpoint(kind: str, folder: Path) -> Path:
    """An A1111-style single file with its ``.yaml`` and a tokenizer sidecar (``<stem>.tokenizer[_2]/``)."""
    from extension.tiny.sd import write_tokenizer_files
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    path = save_tiny_sd_checkpoint(kind, folder / f"tiny-{kind}.safetensors", seed=0)
    write_tokenizer_files(folder / f"tiny-{kind}.tokenizer")
    if kind == "sdxl":
        write_tokenizer_files(folder / f"tiny-{kind}.tokenizer_2")
    return path


def image_config(base: Path, data: Path, out: Path, **overrides):
    """A small, fast text-to-image config (64 px, rank 4)."""
    from extension.config import config_from_dict

    values = dict(base_model=str(base), train_data_dir=str(data), output_dir=str(out), output_name="t",
                  resolution=64, min_bucket_reso=64, max_bucket_reso=64, lora_rank=4, lora_alpha=4,
                  learning_rate=5e-3, batch_size=2, max_train_steps=4, seed=3)
    values.update(overrides)
    return config_from_dict(values, source="test")
