"""The tab's view of an image folder: images with their captions, and caption editing."""

from __future__ import annotations

import csv
import hashlib
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


def thumbnails(items: list[tuple[str, str]], folder: Path, size: int = 256) -> list[tuple[str, str]]:
    """(thumbnail file, caption) for a gallery, the thumbnails written into ``folder`` (LoRA Bridge's own).

    Gallery values are file paths, never PIL images: gradio saves those into a temp folder of the
    host's choosing (Forge Neo's ``opts.temp_dir``), which may not exist. A thumbnail is named after
    its image's path, size and mtime, so it is made once; the folder keeps only the current ones.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out, keep = [], set()
    for path, caption in items[:MAX_GALLERY]:
        try:
            stat = Path(path).stat()
            key = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}"
            thumb = folder / (hashlib.sha1(key.encode("utf-8")).hexdigest()[:20] + ".jpg")
            if not thumb.is_file():
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    img.thumbnail((size, size))
                    with converters.atomic.atomic_file(thumb) as tmp:
                        img.save(tmp, format="JPEG", quality=90)
        except Exception:  # unreadable images are the lint report's business
            continue
        keep.add(thumb.name)
        out.append((str(thumb), caption or Path(path).name))
    for old in folder.glob("*.jpg"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return out


def thumbnail_folder(cache_dir: Path, dataset: str) -> Path:
    """The thumbnails folder of one dataset folder under the host's cache folder."""
    key = hashlib.sha1(str(Path(dataset).expanduser().resolve()).encode("utf-8")).hexdigest()[:12]
    return cache_dir / "thumbnails" / key
