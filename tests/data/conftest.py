"""Fixtures of the dataset tests: small images drawn with PIL and a tiny random BLIP saved to disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def draw(path: Path, size: tuple[int, int], seed: int = 0, fmt: str | None = None) -> Path:
    """Write a seeded noise image of ``size`` (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """``make_image(path, (w, h), seed=0, caption=None)``: an image and optionally its .txt sidecar."""

    def make(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0, caption: str | None = None) -> Path:
        draw(path, size, seed)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption, encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny BLIP captioning model with its processor, saved to a folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizer(str(vocab_file))
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    processor = transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        projection_dim=32)
    model = transformers.BlipForConditionalGeneration(config)
    out = root / "blip"
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    os.remove(vocab_file)
    return out
