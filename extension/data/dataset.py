"""The image dataset of a training run: scanned and linted once, then deterministic per (seed, epoch).

Indices are *sample* indices: each image appears ``repeats`` times (kohya ``N_name`` folders), and
sample ``i`` of epoch ``e`` always gets the same caption, flip, crop and batch position for the same
seed. The engine iterates ``batches_for_epoch(e)`` and resumes mid-epoch by skipping batches.
Torch-free: pixels come as numpy float32 CHW arrays in [-1, 1]; ``torch.from_numpy`` them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import bucket_bounds
from ..errors import UserError
from .buckets import assign_bucket, make_buckets, resize_size, square_bucket
from .captions import CaptionOptions, item_rng, process_caption, split_tags, with_trigger
from .lint import LintReport, enforce_bad_data, lint_dataset


@dataclass
class ImageItem:
    """One usable image."""

    path: Path
    rel: str
    dataset_dir: str
    repeats: int
    caption: str
    width: int
    height: int
    bucket: tuple[int, int]  # (width, height)


@dataclass
class Sample:
    """What the model trains on for one sample index in one epoch."""

    index: int
    image_index: int
    pixels: np.ndarray  # float32 (3, H, W) in [-1, 1]
    caption: str
    bucket: tuple[int, int]  # (width, height)
    flipped: bool
    original_size: tuple[int, int]  # (height, width), SDXL micro-conditioning
    crop_top_left: tuple[int, int]  # (top, left) in resized pixels
    target_size: tuple[int, int]  # (height, width)


def load_rgb(path: Path) -> Any:
    """Open an image as RGB with its EXIF rotation applied (PIL Image)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im) if hasattr(ImageOps, "exif_transpose") else im
            return im.convert("RGB")
    except Image.DecompressionBombError:  # over PIL's own limit, whatever max_image_pixels allows
        raise UserError(f"{path}: too many pixels for PIL to decode safely (decompression-bomb limit "
                        f"{Image.MAX_IMAGE_PIXELS} x 2); downscale the image or remove it") from None


class ImageDataset:
    """Scanned, linted and bucketed images of ``config.train_data_dir`` (a TrainConfig).

    ``bad_data: fail`` raises UserError on any lint problem; ``skip`` keeps the report in
    ``lint_report`` for the front end to show.
    """

    def __init__(self, config: Any, root: str | Path | None = None, report: LintReport | None = None) -> None:
        self.config = config
        root = root if root is not None else config.train_data_dir
        if not root:
            raise UserError("config: 'train_data_dir' is not set; point it at a folder of images")
        self.root = Path(root)
        self.lint_report = report if report is not None else lint_dataset(self.root, config)
        enforce_bad_data(self.lint_report, config.bad_data)
        self.seed = int(config.seed)
        self.caption_options = CaptionOptions(shuffle=config.shuffle_caption, keep_tokens=config.keep_tokens,
                                              caption_dropout_rate=config.caption_dropout_rate,
                                              tag_dropout_rate=config.tag_dropout_rate,
                                              trigger_word=config.trigger_word or "")
        low, high = bucket_bounds(config)
        self.buckets = make_buckets(config.resolution, low, high, config.bucket_reso_steps)
        self.items: list[ImageItem] = []
        for good in self.lint_report.good:
            e = good.entry
            if config.enable_bucket:
                bucket = assign_bucket(good.width, good.height, self.buckets, config.resolution,
                                       high, config.bucket_reso_steps)
            else:
                bucket = square_bucket(good.width, good.height, config.resolution, config.bucket_reso_steps)
            self.items.append(ImageItem(e.path, e.rel, e.dataset_dir, e.repeats, e.caption or "", good.width,
                                        good.height, bucket))
        self.sample_to_image = [i for i, item in enumerate(self.items) for _ in range(item.repeats)]

    # ---- sizes and order ----
    def __len__(self) -> int:
        """Number of samples per epoch (images times repeats)."""
        return len(self.sample_to_image)

    @property
    def caption_is_static(self) -> bool:
        """Captions never change between epochs: text-encoder outputs may be cached per image."""
        return self.caption_options.is_static

    @property
    def pixels_are_static(self) -> bool:
        """Pixels depend only on the image and the flip (no random crop): latents may be cached per (image, flip)."""
        return not self.config.random_crop

    def bucket_of(self, index: int) -> tuple[int, int]:
        """Bucket (width, height) of sample ``index``."""
        return self.items[self.sample_to_image[index]].bucket

    def batches_for_epoch(self, epoch: int, batch_size: int | None = None) -> list[list[int]]:
        """Sample indices grouped into same-bucket batches, in a deterministic order for (seed, epoch).

        The last batch of a bucket may be smaller than ``batch_size`` (default: config.batch_size).
        """
        size = int(batch_size or self.config.batch_size)
        rng = item_rng(self.seed, epoch, 0, "order")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(self.sample_to_image):
            by_bucket.setdefault(self.items[image].bucket, []).append(index)
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket):
            members = by_bucket[bucket]
            order = rng.permutation(len(members))
            shuffled = [members[i] for i in order]
            batches += [shuffled[i:i + size] for i in range(0, len(shuffled), size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def num_batches(self, batch_size: int | None = None) -> int:
        """Batches per epoch (the same for every epoch)."""
        size = int(batch_size or self.config.batch_size)
        counts = Counter(self.items[i].bucket for i in self.sample_to_image)
        return sum(-(-n // size) for n in counts.values())

    # ---- per-sample decisions ----
    def caption(self, index: int, epoch: int) -> str:
        """Caption of sample ``index`` in ``epoch`` after augmentation."""
        base = self.items[self.sample_to_image[index]].caption
        if self.caption_is_static:
            return process_caption(base, self.caption_options, None)
        return process_caption(base, self.caption_options, item_rng(self.seed, epoch, index, "caption"))

    def is_flipped(self, index: int, epoch: int) -> bool:
        """Whether sample ``index`` is mirrored in ``epoch`` (flip_aug)."""
        if not self.config.flip_aug:
            return False
        return bool(item_rng(self.seed, epoch, index, "flip").random() < 0.5)

    def crop_offset(self, index: int, epoch: int) -> tuple[int, int]:
        """(top, left) of the bucket crop in the resized image, before any flip."""
        item = self.items[self.sample_to_image[index]]
        nw, nh = resize_size(item.width, item.height, item.bucket)
        spare_w, spare_h = nw - item.bucket[0], nh - item.bucket[1]
        if self.config.random_crop and (spare_w or spare_h):
            rng = item_rng(self.seed, epoch, index, "crop")
            return int(rng.integers(0, spare_h + 1)), int(rng.integers(0, spare_w + 1))
        return spare_h // 2, spare_w // 2

    def sample(self, index: int, epoch: int) -> Sample:
        """Pixels, caption and SDXL size conditioning of sample ``index`` in ``epoch``."""
        from PIL import Image

        image_index = self.sample_to_image[index]
        item = self.items[image_index]
        bw, bh = item.bucket
        nw, nh = resize_size(item.width, item.height, item.bucket)
        top, left = self.crop_offset(index, epoch)
        im = load_rgb(item.path)
        if (nw, nh) != im.size:
            im = im.resize((nw, nh), Image.LANCZOS)
        im = im.crop((left, top, left + bw, top + bh))
        flipped = self.is_flipped(index, epoch)
        if flipped:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
            left = nw - left - bw
        pixels = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        return Sample(index, image_index, np.ascontiguousarray(pixels), self.caption(index, epoch), item.bucket,
                      flipped, (item.height, item.width), (top, left), (bh, bw))

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index`` of epoch 0 (use ``sample(index, epoch)`` during training)."""
        return self.sample(index, 0)

    def collate(self, indices: list[int], epoch: int) -> dict[str, Any]:
        """One batch as stacked numpy pixels plus lists (all indices must share a bucket)."""
        samples = [self.sample(i, epoch) for i in indices]
        if len({s.bucket for s in samples}) > 1:
            raise ValueError("a batch must hold samples of one bucket")
        return {"pixels": np.stack([s.pixels for s in samples]), "captions": [s.caption for s in samples],
                "indices": list(indices), "image_indices": [s.image_index for s in samples],
                "flipped": [s.flipped for s in samples], "original_sizes": [s.original_size for s in samples],
                "crop_top_lefts": [s.crop_top_left for s in samples],
                "target_sizes": [s.target_size for s in samples]}

    # ---- kohya metadata ----
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """{dataset dir: {tag: number of images}} over the un-augmented captions (trigger word included)."""
        freq: dict[str, Counter] = {}
        for item in self.items:
            tags = split_tags(with_trigger(item.caption, self.caption_options.trigger_word))
            freq.setdefault(item.dataset_dir, Counter()).update(dict.fromkeys(tags, 1))
        return {d: dict(c.most_common()) for d, c in freq.items()}

    def dataset_metadata(self) -> dict[str, str]:
        """kohya ``ss_*`` metadata of the dataset, every value a string (JSON where kohya uses JSON)."""
        cfg = self.config
        dirs: dict[str, dict[str, int]] = {}
        for item in self.items:
            entry = dirs.setdefault(item.dataset_dir, {"n_repeats": item.repeats, "img_count": 0})
            entry["img_count"] += 1
        counts = Counter(self.items[i].bucket for i in self.sample_to_image)
        buckets = {str(k): {"resolution": [w, h], "count": counts[(w, h)]}
                   for k, (w, h) in enumerate(sorted(counts))}
        errors = [abs(item.width / item.height - item.bucket[0] / item.bucket[1]) for item in self.items]
        bucket_info = {"buckets": buckets, "mean_img_ar_error": float(np.mean(errors)) if errors else 0.0}
        return {
            "ss_tag_frequency": json.dumps(self.tag_frequency(), ensure_ascii=False),
            "ss_dataset_dirs": json.dumps(dirs, ensure_ascii=False),
            "ss_bucket_info": json.dumps(bucket_info),
            "ss_num_train_images": str(len(self)),
            "ss_num_batches_per_epoch": str(self.num_batches()),
            "ss_resolution": f"({cfg.resolution}, {cfg.resolution})",
            "ss_enable_bucket": str(bool(cfg.enable_bucket)),
            "ss_bucket_no_upscale": "True",
            "ss_min_bucket_reso": str(bucket_bounds(cfg)[0]),
            "ss_max_bucket_reso": str(bucket_bounds(cfg)[1]),
            "ss_keep_tokens": str(cfg.keep_tokens),
            "ss_shuffle_caption": str(bool(cfg.shuffle_caption)),
            "ss_caption_dropout_rate": str(cfg.caption_dropout_rate),
            "ss_caption_tag_dropout_rate": str(cfg.tag_dropout_rate),
            "ss_flip_aug": str(bool(cfg.flip_aug)),
            "ss_random_crop": str(bool(cfg.random_crop)),
        }
