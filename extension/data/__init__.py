"""Image dataset layer: scan, lint, captions, buckets and the deterministic dataset of a run.

Torch-free; PIL and numpy only (``caption.py`` imports transformers lazily).
"""

from .buckets import assign_bucket, make_buckets, resize_size
from .captions import CaptionOptions, process_caption
from .dataset import ImageDataset, ImageItem, Sample
from .lint import LintReport, enforce_bad_data, lint_cli, lint_dataset
from .scan import IMAGE_EXTENSIONS, scan_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "CaptionOptions",
    "ImageDataset",
    "ImageItem",
    "LintReport",
    "Sample",
    "assign_bucket",
    "enforce_bad_data",
    "lint_cli",
    "lint_dataset",
    "make_buckets",
    "process_caption",
    "resize_size",
    "scan_folder",
]
