"""ImageDataset: deterministic batches, captions, flips and crops; pixels; kohya metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from extension.config import config_from_dict
from extension.data import ImageDataset
from extension.errors import UserError

SIZES = [(96, 64), (64, 96), (128, 128), (200, 100), (70, 70), (96, 64), (128, 80)]


@pytest.fixture
def dataset_dir(tmp_path, make_image):
    for i, size in enumerate(SIZES):
        folder = tmp_path / ("3_alpha" if i % 2 else "beta")
        make_image(folder / f"img{i}.png", size, seed=i, caption=f"tag{i}, red, blue, green, yellow")
    return tmp_path


def cfg_for(root, **extra):
    base = {"train_data_dir": str(root), "resolution": 128, "min_bucket_reso": 64, "max_bucket_reso": 256,
            "batch_size": 2, "seed": 5}
    return config_from_dict({**base, **extra})


def test_batches_group_buckets_and_cover_every_sample(dataset_dir):
    ds = ImageDataset(cfg_for(dataset_dir))
    assert len(ds) == 3 * 3 + 4  # three images in 3_alpha, four in beta
    for epoch in range(3):
        batches = ds.batches_for_epoch(epoch)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(ds)))
        assert all(len(b) <= 2 and len({ds.bucket_of(i) for i in b}) == 1 for b in batches)
        assert len(batches) == ds.num_batches()
    assert ds.batches_for_epoch(0) != ds.batches_for_epoch(1)


def test_resumed_instance_sees_identical_data(dataset_dir):
    options = dict(shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.1, tag_dropout_rate=0.2,
                   flip_aug=True, random_crop=True, trigger_word="sks")
    first, second = ImageDataset(cfg_for(dataset_dir, **options)), ImageDataset(cfg_for(dataset_dir, **options))
    for epoch in (0, 4):
        assert first.batches_for_epoch(epoch) == second.batches_for_epoch(epoch)
        for i in range(len(first)):
            assert first.caption(i, epoch) == second.caption(i, epoch)
            assert first.is_flipped(i, epoch) == second.is_flipped(i, epoch)
            assert first.crop_offset(i, epoch) == second.crop_offset(i, epoch)
        a, b = first.sample(3, epoch), second.sample(3, epoch)
        assert np.array_equal(a.pixels, b.pixels)
    other = ImageDataset(cfg_for(dataset_dir, **{**options, "seed": 6}))
    assert other.batches_for_epoch(0) != first.batches_for_epoch(0)
    flips = [first.is_flipped(i, e) for e in range(4) for i in range(len(first))]
    assert 0 < sum(flips) < len(flips)


def test_sample_pixels_bucket_and_flip(dataset_dir):
    ds = ImageDataset(cfg_for(dataset_dir, flip_aug=True))
    for index in range(len(ds)):
        s = ds.sample(index, 0)
        bw, bh = s.bucket
        assert s.pixels.shape == (3, bh, bw) and s.pixels.dtype == np.float32
        assert s.pixels.min() >= -1.0 and s.pixels.max() <= 1.0
        assert s.target_size == (bh, bw)
        item = ds.items[s.image_index]
        assert s.original_size == (item.height, item.width)
        assert bw <= item.width and bh <= item.height
    plain = ImageDataset(cfg_for(dataset_dir))
    for epoch in range(4):  # find a flipped sample and compare with the unflipped one
        flipped = [i for i in range(len(ds)) if ds.is_flipped(i, epoch)]
        if flipped:
            i = flipped[0]
            assert np.array_equal(ds.sample(i, epoch).pixels, plain.sample(i, epoch).pixels[:, :, ::-1])
            break
    else:  # pragma: no cover
        pytest.fail("no flipped sample")


def test_exact_size_image_is_not_resampled(tmp_path, make_image):
    from PIL import Image

    path = make_image(tmp_path / "a.png", (128, 128), caption="x")
    ds = ImageDataset(cfg_for(tmp_path))
    s = ds.sample(0, 0)
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1
    assert np.array_equal(s.pixels, expected)


def test_static_flags_and_collate(dataset_dir):
    ds = ImageDataset(cfg_for(dataset_dir))
    assert ds.caption_is_static and ds.pixels_are_static
    assert not ImageDataset(cfg_for(dataset_dir, shuffle_caption=True)).caption_is_static
    batch = next(b for b in ds.batches_for_epoch(0) if len(b) == 2)
    out = ds.collate(batch, 0)
    assert out["pixels"].shape[0] == 2 and len(out["captions"]) == 2


def test_dataset_metadata(dataset_dir):
    ds = ImageDataset(cfg_for(dataset_dir, trigger_word="sks"))
    meta = ds.dataset_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    freq = json.loads(meta["ss_tag_frequency"])
    assert freq["3_alpha"]["red"] == 3 and freq["beta"]["red"] == 4 and freq["beta"]["sks"] == 4
    assert json.loads(meta["ss_dataset_dirs"]) == {"3_alpha": {"n_repeats": 3, "img_count": 3},
                                                   "beta": {"n_repeats": 1, "img_count": 4}}
    info = json.loads(meta["ss_bucket_info"])
    assert sum(b["count"] for b in info["buckets"].values()) == len(ds)
    assert meta["ss_num_train_images"] == str(len(ds)) and meta["ss_resolution"] == "(128, 128)"


def test_bad_data_policy(dataset_dir):
    (dataset_dir / "beta" / "broken.png").write_bytes(b"not an image at all")
    expected = r"1 unreadable images \(first: \S*broken.png\); fix them \(see `lora-bridge lint`\), .*bad_data: skip"
    with pytest.raises(UserError, match=expected):
        ImageDataset(cfg_for(dataset_dir))
    ds = ImageDataset(cfg_for(dataset_dir, bad_data="skip"))
    assert len(ds.items) == len(SIZES) and ds.lint_report.counts() == {"unreadable": 1}


def test_empty_folder_is_fatal_even_with_skip(tmp_path):
    with pytest.raises(UserError, match="no usable images: 1 empty folder"):
        ImageDataset(cfg_for(tmp_path, bad_data="skip"))
