"""Aspect-ratio buckets, kohya style, without ever upscaling an image.

The bucket list is kohya's: every (w, h) with sides in [min_reso, max_reso] in multiples of
``steps`` and area at most resolution²; plus the square. An image goes to the bucket of the nearest
aspect ratio (log-ratio distance, larger area on ties) when it covers that bucket; otherwise it gets
a smaller bucket of its own (its size, scaled to the area budget, floored to ``steps``), as kohya's
``bucket_no_upscale`` does. Images are then resized down to cover the bucket and cropped.
"""

from __future__ import annotations

import math


def make_buckets(resolution: int, min_reso: int = 256, max_reso: int = 1024, steps: int = 64) -> list[tuple[int, int]]:
    """kohya's bucket resolutions (width, height) for a ``resolution``² pixel budget, sorted."""
    max_area = resolution * resolution
    side = int(math.sqrt(max_area) // steps) * steps
    buckets = {(side, side)}
    width = -(-min_reso // steps) * steps
    while width <= max_reso:
        height = min(max_reso, int((max_area // width) // steps) * steps)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
        width += steps
    return sorted(buckets)


def _own_bucket(width: int, height: int, max_area: int, max_reso: int, steps: int) -> tuple[int, int]:
    """A bucket inside the image itself: scaled to the area budget if larger, floored to ``steps``."""
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    bw = max(steps, min(max_reso, int(width * scale) // steps * steps))
    bh = max(steps, min(max_reso, int(height * scale) // steps * steps))
    return min(bw, width // steps * steps), min(bh, height // steps * steps)


def assign_bucket(width: int, height: int, buckets: list[tuple[int, int]], resolution: int,
                  max_reso: int = 1024, steps: int = 64) -> tuple[int, int]:
    """The bucket (width, height) of an image: nearest aspect ratio that the image covers, never upscaled.

    The image must be at least ``steps`` pixels on each side (lint checks this).
    """
    if min(width, height) < steps:
        raise ValueError(f"image {width}x{height} is smaller than {steps} pixels on a side")
    log_ar = math.log(width / height)
    best = min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - log_ar), -b[0] * b[1]))
    if best[0] <= width and best[1] <= height:
        return best
    return _own_bucket(width, height, resolution * resolution, max_reso, steps)


def square_bucket(width: int, height: int, resolution: int, steps: int = 64) -> tuple[int, int]:
    """The bucket when bucketing is off: a resolution² square, or the largest square inside a smaller image."""
    side = min(resolution, min(width, height) // steps * steps)
    return side, side


def resize_size(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """Size to resize an image to so it just covers ``bucket`` (never larger than the image)."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    return max(bw, min(width, round(width * scale))), max(bh, min(height, round(height * scale)))
