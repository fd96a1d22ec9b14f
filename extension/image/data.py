"""The engine's view of the data layer's ``ImageDataset``: torch tensors, per-process batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TrainItem:
    """One sample as the engine uses it; ``index`` is the image (shared by repeats) for latent caching.

    Pixels are decoded only when asked for, so cached latents skip image loading entirely.
    """

    index: int
    caption: str
    flipped: bool
    bucket: tuple[int, int]  # (width, height)
    original_size: tuple[int, int]  # (height, width)
    crop_top_left: tuple[int, int]  # (top, left)
    target_size: tuple[int, int]  # (height, width)
    load_pixels: Callable[[], torch.Tensor] = field(repr=False, default=None)
    _pixels: torch.Tensor | None = field(default=None, repr=False)

    @property
    def pixels(self) -> torch.Tensor:
        """(3, H, W) float32 in [-1, 1]."""
        if self._pixels is None:
            self._pixels = self.load_pixels()
        return self._pixels


class ImageData:
    """Scans and lints ``config.train_data_dir`` once (``bad_data`` applies) and serves batches."""

    def __init__(self, config: Any) -> None:
        from ..data.dataset import ImageDataset

        self.dataset = ImageDataset(config)
        self.report = self.dataset.lint_report

    @property
    def num_images(self) -> int:
        """Usable images (before repeats)."""
        return len(self.dataset.items)

    @property
    def text_is_static(self) -> bool:
        """Captions never change: text-encoder outputs may be cached."""
        return self.dataset.caption_is_static

    @property
    def pixels_are_static(self) -> bool:
        """Pixels depend only on (image, flip, bucket): latents may be cached."""
        return self.dataset.pixels_are_static

    def batches_for_process(self, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        """This process's share of the epoch's batches; every process gets the same number."""
        batches = self.dataset.batches_for_epoch(epoch)
        if world > 1:
            batches = batches[: len(batches) // world * world]
        return batches[rank::world]

    def item(self, index: int, epoch: int) -> TrainItem:
        """Sample ``index`` of ``epoch`` with its augmentations applied."""
        from ..data.buckets import resize_size

        ds = self.dataset
        image_index = ds.sample_to_image[index]
        image = ds.items[image_index]
        bw, bh = image.bucket
        flipped = ds.is_flipped(index, epoch)
        top, left = ds.crop_offset(index, epoch)
        if flipped:  # the same crop box, measured from the mirrored side (as the data layer does)
            left = resize_size(image.width, image.height, image.bucket)[0] - left - bw
        return TrainItem(image_index, ds.caption(index, epoch), flipped, (bw, bh), (image.height, image.width),
                         (top, left), (bh, bw),
                         load_pixels=lambda: torch.from_numpy(ds.sample(index, epoch).pixels))

    def metadata(self) -> dict[str, str]:
        """kohya dataset metadata (tag frequency, dirs, buckets, counts)."""
        return self.dataset.dataset_metadata()
