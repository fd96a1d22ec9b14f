"""Check an image dataset before training: every problem counted and named, nothing silently dropped.

Problems: an empty folder, zero-byte, unreadable, truncated, absurdly large or too small images,
images without a caption, metadata rows naming files that are not there. ``bad_data: fail`` turns
any of them into a UserError; ``skip`` trains on the rest and keeps the report.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cancel import cancel_point
from ..errors import UserError
from .scan import ScanEntry, ScanProblem, scan_folder

KIND_LABELS = {
    "empty": "empty folder",
    "csv_missing_file": "metadata rows naming missing files",
    "no_caption": "images without caption",
    "zero_byte": "zero-byte files",
    "unreadable": "unreadable images",
    "truncated": "truncated images",
    "too_large": "absurdly large images",
    "too_small": "images too small to train",
}
KIND_FIX = {
    "empty": "put png/jpg/webp images (and captions) in the folder",
    "csv_missing_file": "fix or remove those rows",
    "no_caption": "add NAME.txt captions, metadata.csv rows, or run `lora-bridge caption DIR --model BLIP_DIR`",
    "zero_byte": "delete or replace them",
    "unreadable": "re-save them as png/jpg",
    "truncated": "re-download or re-save them",
    "too_large": "downscale them (or raise max_image_pixels)",
    "too_small": "use larger images",
}


@dataclass
class GoodImage:
    """An image that passed every check, with its size after EXIF rotation."""

    entry: ScanEntry
    width: int
    height: int


@dataclass
class LintReport:
    """Result of ``lint_dataset``: usable images and every problem found."""

    root: str
    found: int = 0
    good: list[GoodImage] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems of each kind."""
        return dict(Counter(p.kind for p in self.problems))

    def summary(self) -> str:
        """One line: counts per kind with the first file of each (its name inside the dataset folder).

        One name a kind, never a list: errors and logs reach REST callers, and a wrong ``train_data_dir``
        (``/``) must not list unrelated files; ``lines()`` (``lora-bridge lint``) names them all.
        """
        parts = []
        for kind, count in self.counts().items():
            first = next(p.path for p in self.problems if p.kind == kind)
            parts.append(f"{count} {KIND_LABELS.get(kind, kind)} (first: {first})")
        return "; ".join(parts)

    def lines(self) -> list[str]:
        """The full report, one line per problem, grouped by kind, with the fix."""
        out = [f"{self.root}: {self.found} image(s), {len(self.good)} usable, {len(self.problems)} problem(s)"]
        for kind, count in self.counts().items():
            out.append(f"  {count} {KIND_LABELS.get(kind, kind)}: {KIND_FIX.get(kind, '')}")
            out += [f"    {p.path}: {p.detail}" for p in self.problems if p.kind == kind]
        return out

    def format(self) -> str:
        """The full report as text (``lines()`` joined)."""
        return "\n".join(self.lines())

    to_text = format

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the UI and the REST API."""
        return {"root": self.root, "found": self.found, "usable": len(self.good), "counts": self.counts(),
                "problems": [{"kind": p.kind, "path": p.path, "detail": p.detail} for p in self.problems]}


def probe_image(path: Path, max_pixels: int, min_side: int = 8) -> tuple[int, int] | ScanProblem:
    """Fully decode ``path``; its (width, height) after EXIF rotation, or the problem found."""
    from PIL import Image, ImageFile

    name = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ScanProblem("unreadable", name, str(exc))
    if size == 0:
        return ScanProblem("zero_byte", name, "file is empty (0 bytes)")
    old_truncated, old_limit = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a host may have switched it on; truncated files must fail here
    if old_limit is not None and max_pixels > old_limit:
        Image.MAX_IMAGE_PIXELS = max_pixels  # our own limit is checked below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    return ScanProblem("too_large", name, f"{width}x{height} is over max_image_pixels {max_pixels}")
                if old_limit is not None and width * height > 2 * old_limit:
                    # Training decodes with PIL's own limit (a host-wide setting): it would refuse this image.
                    return ScanProblem("too_large", name, f"{width}x{height} is over PIL's decompression-bomb "
                                                          f"limit {2 * old_limit}")
                orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ScanProblem("too_large", name, str(exc).split(".")[0])
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower() or "broken data stream" in text.lower() or "premature end" in text.lower():
            return ScanProblem("truncated", name, text)
        return ScanProblem("unreadable", name, text or type(exc).__name__)
    except (ValueError, SyntaxError, EOFError) as exc:  # PIL raises these for some malformed files
        return ScanProblem("truncated" if isinstance(exc, EOFError) else "unreadable", name, str(exc) or "bad data")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = old_truncated, old_limit
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if min(width, height) < min_side:
        return ScanProblem("too_small", name, f"{width}x{height} is below {min_side} pixels on a side")
    return width, height


def lint_dataset(root: str | Path, config: Any = None) -> LintReport:
    """Scan and check every image under ``root`` with the dataset keys of ``config`` (a TrainConfig).

    Raises UserError only when ``root`` is not a folder or a metadata file cannot be parsed.
    """
    from ..config import TrainConfig

    cfg = config if config is not None else TrainConfig()
    scan = scan_folder(root, metadata_path=cfg.metadata_path, caption_extension=cfg.caption_extension,
                       num_repeats=cfg.num_repeats, exclude=(cfg.output_dir,))
    report = LintReport(root=str(root), found=len(scan.entries))
    report.problems += [p for p in scan.problems if p.kind != "no_caption"]
    missing_caption = {p.path for p in scan.problems if p.kind == "no_caption"}
    for entry in scan.entries:
        cancel_point()  # decoding every image of a large folder takes a while
        result = probe_image(entry.path, cfg.max_image_pixels, min_side=cfg.bucket_reso_steps)
        if isinstance(result, ScanProblem):
            result.path = entry.rel
            report.problems.append(result)
        elif entry.rel in missing_caption:
            report.problems.append(next(p for p in scan.problems if p.kind == "no_caption" and p.path == entry.rel))
        else:
            report.good.append(GoodImage(entry, *result))
    return report


def enforce_bad_data(report: LintReport, bad_data: str) -> None:
    """Apply the ``bad_data`` policy: raise on any problem (fail) or when nothing usable is left (skip)."""
    if not report.good:
        why = f": {report.summary()}" if report.summary() else " (no png/jpg/webp/bmp files found)"
        raise UserError(f"{report.root}: no usable images{why}; fix the dataset (see `lora-bridge lint`)")
    if report.problems and bad_data == "fail":
        raise UserError(f"{report.root}: {report.summary()}; fix them (see `lora-bridge lint`), "
                        "or set bad_data: skip to train without them")


def lint_cli(directory: str, config: Any = None) -> int:
    """``lora-bridge lint DIR``: print the report; exit 0 when clean, 2 when there are problems."""
    report = lint_dataset(directory, config)
    for line in report.lines():
        print(line)
    return 0 if report.clean else 2
