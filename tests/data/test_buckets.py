"""Aspect-ratio buckets: kohya's list, nearest aspect, never upscaled."""

from __future__ import annotations

import numpy as np
import pytest

from extension.data.buckets import assign_bucket, make_buckets, resize_size, square_bucket


def test_kohya_bucket_list_512():
    buckets = make_buckets(512, 256, 1024, 64)
    assert (512, 512) in buckets and (640, 384) in buckets and (384, 640) in buckets
    assert (256, 1024) in buckets and (1024, 256) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert all(256 <= s <= 1024 for b in buckets for s in b)


def test_nearest_aspect_for_large_images():
    buckets = make_buckets(512, 256, 1024, 64)
    assert assign_bucket(2000, 2000, buckets, 512) == (512, 512)
    assert assign_bucket(1920, 1080, buckets, 512) == (640, 384)
    assert assign_bucket(1080, 1920, buckets, 512) == (384, 640)


@pytest.mark.parametrize("resolution", [512, 1024])
def test_never_upscale_random_sizes(resolution):
    rng = np.random.default_rng(0)
    buckets = make_buckets(resolution, 256, 2048, 64)
    for _ in range(3000):
        w, h = (int(v) for v in rng.integers(64, 3000, 2))
        bw, bh = assign_bucket(w, h, buckets, resolution, 2048, 64)
        assert bw <= w and bh <= h, (w, h, bw, bh)
        assert bw % 64 == 0 and bh % 64 == 0 and bw * bh <= resolution * resolution
        nw, nh = resize_size(w, h, (bw, bh))
        assert bw <= nw <= w and bh <= nh <= h
        scale = max(bw / w, bh / h)  # one scale for both sides: the aspect ratio is kept up to rounding
        assert abs(nw - w * scale) <= 1 and abs(nh - h * scale) <= 1


def test_small_image_gets_smaller_bucket():
    buckets = make_buckets(512, 256, 1024, 64)
    assert assign_bucket(300, 200, buckets, 512) == (256, 192)
    assert assign_bucket(100, 100, buckets, 512) == (64, 64)
    assert square_bucket(300, 200, 512) == (192, 192)
    assert square_bucket(3000, 2000, 512) == (512, 512)
    with pytest.raises(ValueError):
        assign_bucket(40, 400, buckets, 512)
