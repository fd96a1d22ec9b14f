"""Find the images of a dataset folder, their captions and their repeat counts (no image decoding).

Layouts understood:

- images directly in ``train_data_dir``, or in subfolders; kohya's ``N_name`` subfolders repeat
  their images N times (``10_mychar/`` = 10 repeats), other folders use ``num_repeats``. The
  dataset "dir" of an image (for repeats and tag statistics) is its first folder under the root,
  or the root itself;
- captions from ``metadata.csv`` (``filename,prompt`` or diffusers' ``file_name,text``) or
  ``metadata.jsonl`` (``{"file_name": ..., "text": ...}``) in any folder, paths relative to that
  file, or from the file named by ``metadata_path``; otherwise a sidecar ``name.txt`` /
  ``name.caption`` (``caption_extension`` first). A metadata row wins over a sidecar.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")
MAX_DEPTH = 3  # folder levels below the root: N_name/ and two more
MAX_ENTRIES = 100_000
MAX_SECONDS = 30
_FILE_COLUMNS = ("filename", "file_name", "file", "image", "image_file")
_TEXT_COLUMNS = ("prompt", "text", "caption", "captions")


@dataclass
class ScanEntry:
    """One image found on disk with its caption (None when it has none) and where it came from."""

    path: Path
    rel: str  # path relative to the root, with forward slashes
    dataset_dir: str  # name of the folder that sets the repeats
    repeats: int
    caption: str | None
    caption_source: str  # "csv", "jsonl", "sidecar" or ""


@dataclass
class ScanProblem:
    """Something wrong found while scanning (the image checks live in lint.py)."""

    kind: str
    path: str
    detail: str


@dataclass
class ScanResult:
    """All images under the root in a stable order, and what was wrong with the layout."""

    root: Path
    entries: list[ScanEntry] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    dataset_dirs: dict[str, int] = field(default_factory=dict)  # dir name -> repeats


def repeats_of(dir_name: str, default: int) -> int:
    """Repeat count of a kohya ``N_name`` folder, else ``default``."""
    m = _REPEAT_DIR.match(dir_name)
    return max(1, int(m.group(1))) if m else default


def read_sidecar(image: Path, caption_extension: str = ".txt") -> str | None:
    """Caption from ``image``'s sidecar file, or None when there is none.

    Lines are joined with spaces; a UTF-8 BOM is ignored.
    """
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    for suffix in dict.fromkeys((ext, ".txt", ".caption")):
        side = image.with_suffix(suffix)
        if side.is_file():
            text = side.read_text(encoding="utf-8-sig", errors="replace")
            return " ".join(line.strip() for line in text.splitlines() if line.strip())
    return None


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    """The first column whose lower-cased name is in ``wanted``."""
    lower = {c.strip().lower(): c for c in columns if c is not None}
    for name in wanted:
        if name in lower:
            return lower[name]
    return None


def read_metadata_file(path: Path) -> list[tuple[int, str, str]]:
    """Rows ``(line number, file name, caption)`` of a metadata.csv or metadata.jsonl.

    Raises UserError when the file has no usable header / keys.
    """
    rows: list[tuple[int, str, str]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: captions file is not UTF-8 ({exc.reason} at byte {exc.start}); "
                        "save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read captions file ({exc.strerror})") from None
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {number} is not JSON; write one object per line") from None
            name = obj.get("file_name", obj.get("filename")) if isinstance(obj, dict) else None
            caption = obj.get("text", obj.get("prompt", obj.get("caption"))) if isinstance(obj, dict) else None
            if not isinstance(name, str) or not isinstance(caption, str):
                raise UserError(f"{path}: line {number} needs string keys file_name and text")
            rows.append((number, name, caption))
        return rows
    reader = csv.DictReader(text.splitlines())
    columns = list(reader.fieldnames or [])
    file_col, text_col = _pick(columns, _FILE_COLUMNS), _pick(columns, _TEXT_COLUMNS)
    if file_col is None or text_col is None:
        # the header is not quoted: metadata_path may name any file, and its first line may be a secret
        raise UserError(f"{path}: line 1 must be a CSV header naming the image and caption columns "
                        f"(filename,prompt or file_name,text); it has {len([c for c in columns if c])} "
                        "other column(s)")
    for number, row in enumerate(reader, 2):
        name = (row.get(file_col) or "").strip()
        if not name:
            continue
        rows.append((number, name, (row.get(text_col) or "").strip()))
    return rows


def _dataset_files(root: Path, exclude: tuple[Path, ...] = ()) -> tuple[list[Path], list[Path]]:
    """(images, metadata files) under ``root``, sorted; hidden files and folders and ``exclude``d folders skipped.

    The walk is bounded (``MAX_DEPTH`` folder levels, ``MAX_ENTRIES`` entries, ``MAX_SECONDS``): a dataset is a folder
    of images in a few subfolders, and ``train_data_dir: /`` must not scan the whole disk. Symlinked
    folders are not followed.
    """
    images: list[Path] = []
    metas: list[Path] = []
    seen = 0
    deadline = time.monotonic() + MAX_SECONDS
    for folder, dirs, files in os.walk(root, onerror=None, followlinks=False):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        seen += len(dirs) + len(files)
        if seen > MAX_ENTRIES or time.monotonic() > deadline:
            what = (f"more than {MAX_ENTRIES} files and folders" if seen > MAX_ENTRIES
                    else f"{seen} files and folders and still listing after {MAX_SECONDS} s")
            raise UserError(f"{root}: {what} within {MAX_DEPTH} folder levels; train_data_dir must be the "
                            "dataset folder (images, or N_name/ subfolders of images)")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__" and depth < MAX_DEPTH
                         and not any(ex == here / d for ex in exclude))
        for name in files:
            if name.startswith("."):
                continue
            path = here / name
            if name in METADATA_NAMES:
                metas.append(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                images.append(path)
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(metas, key=key)


def scan_folder(root: str | Path, *, metadata_path: str | None = None, caption_extension: str = ".txt",
                num_repeats: int = 1, exclude: tuple[str | Path, ...] = ()) -> ScanResult:
    """List the images under ``root`` with captions and repeats; layout problems go to ``problems``.

    ``exclude``: folders to leave out (the run's output_dir, whose samples must not become data).

    Raises UserError only when ``root`` itself is not a folder or a metadata file is unreadable.
    """
    root = Path(root)
    if not root.is_dir():
        hint = "it does not exist" if not root.exists() else "it is not a folder"
        raise UserError(f"{root}: train_data_dir must be a folder of images; {hint}")
    result = ScanResult(root=root)
    excluded = tuple(Path(p).resolve() for p in exclude if p)
    found, metas = _dataset_files(root.resolve(), excluded)
    images = [root / p.relative_to(root.resolve()) for p in found]
    by_resolved = {p.resolve(): p for p in images}

    captions: dict[Path, tuple[str, str]] = {}
    meta_files = [root / p.relative_to(root.resolve()) for p in metas]
    if metadata_path:
        explicit = Path(metadata_path)
        if not explicit.is_absolute() and not explicit.exists() and (root / explicit).exists():
            explicit = root / explicit
        if not explicit.is_file():
            raise UserError(f"{metadata_path}: metadata_path does not name a file; fix the path or remove the key")
        meta_files = [p for p in meta_files if p.resolve() != explicit.resolve()] + [explicit]
    for meta in meta_files:  # the explicit file comes last and wins
        kind = "jsonl" if meta.suffix.lower() == ".jsonl" else "csv"
        for number, name, caption in read_metadata_file(meta):
            target = None
            for base in (meta.parent, root):
                candidate = (base / name).resolve()
                if candidate in by_resolved:
                    target = by_resolved[candidate]
                    break
            if target is None:
                result.problems.append(ScanProblem("csv_missing_file", f"{meta.name}:{number}",
                                                   f"line {number} names no image of the dataset"))
                continue
            captions[target] = (caption, kind)

    for image in images:
        rel = image.relative_to(root)
        dataset_dir = rel.parts[0] if len(rel.parts) > 1 else root.name
        repeats = repeats_of(dataset_dir, num_repeats)
        result.dataset_dirs.setdefault(dataset_dir, repeats)
        if image in captions:
            caption, source = captions[image]
        else:
            caption, source = read_sidecar(image, caption_extension), "sidecar"
            if caption is None:
                source = ""
                result.problems.append(ScanProblem("no_caption", rel.as_posix(),
                                                   f"no {caption_extension} sidecar and no metadata row"))
        result.entries.append(ScanEntry(image, rel.as_posix(), dataset_dir, repeats, caption, source))
    if not images:
        result.problems.append(ScanProblem("empty", str(root), "no png/jpg/jpeg/webp images found"))
    return result
