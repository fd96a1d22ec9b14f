"""Issue 22 #11: an image over PIL's decompression-bomb limit with ``max_image_pixels`` raised is one line
naming the file (lint at Start, and the loader if it ever gets one), not a DecompressionBombError traceback."""

from __future__ import annotations

import pytest

from extension.config import config_from_dict
from extension.data import lint_dataset
from extension.errors import UserError


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 14000 x 14000 one-bit PNG: 196 M pixels (over PIL's 2 x 89 M error limit) in a few kB."""
    from PIL import Image

    root = tmp_path_factory.mktemp("bomb")
    folder = root / "1_bomb"
    folder.mkdir()
    Image.new("1", (14000, 14000)).save(folder / "bomb.png")
    (folder / "bomb.txt").write_text("a bomb\n")
    return root, folder / "bomb.png"


def test_lint_reports_it_even_with_max_image_pixels_raised(bomb):
    root, _ = bomb
    report = lint_dataset(root, config_from_dict({"max_image_pixels": 10**9}))
    assert [(p.kind, p.path) for p in report.problems] == [("too_large", "1_bomb/bomb.png")]
    assert "decompression-bomb limit" in report.problems[0].detail and not report.good


def test_start_refuses_it_with_one_line(bomb, tmp_path):
    from extension.tiny.sd import write_tokenizer_files
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint
    from extension.ui.preflight import check_start

    root, _ = bomb
    write_tokenizer_files(tmp_path / "tiny.tokenizer")  # Start checks for a tokenizer first (#24)
    base = save_tiny_sd_checkpoint("sd1", tmp_path / "tiny.safetensors")
    with pytest.raises(UserError) as info:
        check_start({"base_model": str(base), "train_data_dir": str(root), "max_image_pixels": 10**9,
                     "output_dir": str(tmp_path / "out")})
    assert "bomb.png" in str(info.value) and "\n" not in str(info.value).strip()


def test_loader_names_the_file(bomb):
    from extension.data.dataset import load_rgb

    _, path = bomb
    with pytest.raises(UserError, match=f"^{path}: too many pixels"):
        load_rgb(path)
