"""``lora-bridge caption DIR --model PATH``: caption images with a BLIP model from a local folder.

Nothing is downloaded (``local_files_only=True``). Existing captions (sidecars or metadata rows)
are kept unless ``overwrite``. Output: ``name.txt`` sidecars, or ``metadata.csv`` in DIR.
"""

from __future__ import annotations

import csv
import importlib
import io
from pathlib import Path
from typing import Any

from .._converters import converters
from ..errors import UserError
from .scan import read_metadata_file, scan_folder

MAX_NEW_TOKENS = 40


def _atomic() -> Any:
    """The format layer's atomic-write module (under whatever name the package was loaded)."""
    return importlib.import_module(converters.__name__ + ".atomic")


def load_blip(model_path: str | Path) -> tuple[Any, Any]:
    """(processor, model) of a local BLIP captioning folder; UserError with the fix when it is not one."""
    path = Path(model_path)
    if not path.is_dir():
        raise UserError(f"{path}: --model must be a local BLIP folder (config.json, weights, tokenizer and "
                        "preprocessor files); download one, e.g. Salesforce/blip-image-captioning-base, yourself")
    try:
        from transformers import BlipForConditionalGeneration, BlipProcessor
    except ImportError:
        raise UserError("captioning needs transformers with BLIP (>= 4.26); pip install transformers") from None
    try:
        processor = BlipProcessor.from_pretrained(str(path), local_files_only=True)
        model = BlipForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a loadable BLIP captioning model ({first}); pass a folder saved by "
                        "BlipForConditionalGeneration.save_pretrained with its processor") from None
    model.eval()
    return processor, model


def generate_caption(processor: Any, model: Any, image: Any, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """One greedy BLIP caption for a PIL RGB image."""
    import torch

    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=max_new_tokens, num_beams=1,
                             do_sample=False)
    return " ".join(processor.decode(out[0], skip_special_tokens=True).split())


def _write_text(path: Path, text: str) -> None:
    """Write UTF-8 text through a temp file and rename."""
    with _atomic().atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_csv(path: Path, header: tuple[str, str], rows: dict[str, str]) -> None:
    """Write ``metadata.csv`` atomically with ``header`` and ``rows`` (file name -> caption)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for name, caption in rows.items():
        writer.writerow([name, caption])
    _write_text(path, buf.getvalue())


def caption_cli(directory: str, model_path: str, overwrite: bool = False, to: str = "txt") -> int:
    """Caption the images of ``directory``; exit code 0, or 2 when some images could not be read."""
    from .dataset import load_rgb

    if to not in ("txt", "csv"):
        raise UserError(f"--to must be txt or csv, got {to!r}")
    root = Path(directory)
    scan = scan_folder(root)
    if not scan.entries:
        raise UserError(f"{root}: no png/jpg/jpeg/webp images to caption")
    csv_path = root / "metadata.csv"
    header, csv_rows = ("filename", "prompt"), {}
    if to == "csv" and csv_path.is_file():
        first = csv_path.read_text(encoding="utf-8-sig").splitlines()[:1]
        if first:
            cols = next(csv.reader(first))
            if len(cols) >= 2:
                header = (cols[0].strip(), cols[1].strip())
        csv_rows = {name: caption for _, name, caption in read_metadata_file(csv_path)}

    todo = [e for e in scan.entries if overwrite or e.caption is None]
    kept = len(scan.entries) - len(todo)
    if not todo:
        print(f"{root}: all {kept} image(s) already have captions; pass --overwrite to replace them")
        return 0
    processor, model = load_blip(model_path)
    failed: list[str] = []
    written = 0
    for entry in todo:
        try:
            image = load_rgb(entry.path)
        except OSError as exc:
            failed.append(f"{entry.rel} ({exc})")
            continue
        text = generate_caption(processor, model, image)
        if to == "txt":
            _write_text(entry.path.with_suffix(".txt"), text + "\n")
        else:
            csv_rows[entry.rel] = text
        written += 1
        print(f"{entry.rel}: {text}")
    if to == "csv":
        for entry in scan.entries:  # keep captions that came from sidecars when switching to a csv
            if entry.rel not in csv_rows and entry.caption is not None:
                csv_rows[entry.rel] = entry.caption
        _write_csv(csv_path, header, dict(sorted(csv_rows.items())))
    where = "metadata.csv" if to == "csv" else ".txt sidecars"
    print(f"{root}: captioned {written}, kept {kept} existing, {len(failed)} unreadable -> {where}")
    for line in failed:
        print(f"  unreadable: {line}")
    return 2 if failed else 0
