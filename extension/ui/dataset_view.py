"""The tab's view of an image folder: images with their captions, and caption editing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .._converters import converters
from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_GALLERY = 200


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file through the format layer's atomic writer."""
    atomic = converters.atomic
    with atomic.atomic_file(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _csv_captions(folder: Path) -> dict[str, str]:
    """filename -> prompt from ``metadata.csv`` (the engine's other caption source)."""
    meta = folder / "metadata.csv"
    if not meta.is_file():
        return {}
    with open(meta, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = {}
    for row in rows:
        name = row.get("file_name") or row.get("filename") or row.get("image")
        text = row.get("prompt") or row.get("text") or row.get("caption") or ""
        if name:
            out[name] = text
    return out


def image_folder(folder: str | None) -> Path:
    """``folder`` as a Path; the one message (Load, Lint and Start alike) when it is empty or not a folder."""
    text = str(folder or "").strip()
    root = Path(text).expanduser()
    if not text or not root.is_dir():
        raise UserError(f"{text or '(empty)'}: no such folder; set Image folder in Dataset to the folder that holds "
                        "the training images")
    return root


def list_images(folder: str) -> list[tuple[str, str]]:
    """(image path, caption) for every image under ``folder`` (sidecar .txt/.caption, else metadata.csv)."""
    root = image_folder(folder)
    from_csv = _csv_captions(root)
    items = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        caption = ""
        for ext in (".txt", ".caption"):
            side = path.with_suffix(ext)
            if side.is_file():
                caption = side.read_text(encoding="utf-8", errors="replace").strip()
                break
        else:
            caption = from_csv.get(str(path.relative_to(root)), from_csv.get(path.name, ""))
        items.append((str(path), caption))
    return items


def save_caption(folder: str, image_path: str, caption: str) -> str:
    """Store an edited caption where the engine reads it: the sidecar if any, else metadata.csv, else a new .txt."""
    root = Path(folder).expanduser()
    image = Path(image_path)
    if not image.is_file():
        raise UserError(f"{image_path}: no such image; select an image in the gallery first")
    caption = caption.strip()
    for ext in (".txt", ".caption"):
        side = image.with_suffix(ext)
        if side.is_file():
            write_text_atomic(side, caption + "\n")
            return f"saved {side.name}"
    meta = root / "metadata.csv"
    if meta.is_file():
        with open(meta, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        key = next((f for f in ("file_name", "filename", "image") if f in fields), None)
        text_key = next((f for f in ("prompt", "text", "caption") if f in fields), None)
        rel = str(image.relative_to(root))
        for row in rows if key and text_key else []:
            if row[key] in (rel, image.name):
                row[text_key] = caption
                out = io.StringIO()
                writer = csv.DictWriter(out, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
                write_text_atomic(meta, out.getvalue())
                return f"saved row {rel} in metadata.csv"
    side = image.with_suffix(".txt")
    write_text_atomic(side, caption + "\n")
    return f"saved {side.name}"


def thumbnails(items: list[tuple[str, str]], size: int = 256) -> list[tuple[object, str]]:
    """PIL thumbnails with captions for a gallery (any gradio version serves them, wherever the folder is)."""
    from PIL import Image

    out = []
    for path, caption in items[:MAX_GALLERY]:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail((size, size))
                out.append((img.copy(), caption or Path(path).name))
        except Exception:  # unreadable images are the lint report's business
            continue
    return out
