"""The CLIP tokenizer, offline: an explicit folder, a sidecar beside the checkpoint, the host's own
copy (Forge and Forge Neo ship them), the local HF cache, or the BPE file the open_clip package ships.
Nothing is downloaded."""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path

from ..errors import UserError
from ..text.tokenizer import bytes_to_unicode

_OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
SUBFOLDERS = ("tokenizer", "tokenizer_2")  # per text encoder, in diffusers folders and the hosts' copies


def _is_tokenizer_dir(folder: Path | None) -> bool:
    return folder is not None and folder.is_dir() and (
        (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()
    )


def sidecar_tokenizer_dirs(checkpoint: Path, index: int = 0) -> list[Path]:
    """Folders checked beside a single-file checkpoint: ``<stem>.tokenizer[_2]/`` and ``tokenizer[_2]/``."""
    suffix = "" if index == 0 else "_2"
    return [
        checkpoint.with_name(f"{checkpoint.stem}.tokenizer{suffix}"),
        checkpoint.parent / f"tokenizer{suffix}",
    ]


def tokenizer_subfolder(root: Path, index: int) -> Path:
    """``tokenizer_path`` may be one tokenizer folder or a folder with tokenizer/ and tokenizer_2/."""
    sub = root / SUBFOLDERS[index]
    return sub if sub.is_dir() else root


def host_tokenizer_dir(root: Path | None, index: int = 0) -> Path | None:
    """``root/tokenizer`` (``tokenizer_2`` for the second encoder) when it holds a tokenizer, else None."""
    if root is None:
        return None
    sub = root / SUBFOLDERS[index]
    return sub if _is_tokenizer_dir(sub) else None


def find_clip_tokenizer(folder: Path | None, checkpoint: Path, index: int = 0, cache_id: str | None = None,
                        host_root: Path | None = None) -> tuple[str, Path]:
    """Where the CLIP tokenizer of text encoder ``index`` comes from, without loading it.

    (source, path), first that exists: ``folder`` (tokenizer_path), ``sidecar`` (beside the
    checkpoint), ``host`` (``host_root/tokenizer[_2]``, the WebUI's own copy), ``cache`` (local HF
    cache of ``cache_id``), ``open_clip`` (path of its BPE file). UserError naming what to provide otherwise.
    """
    if folder is not None:
        if _is_tokenizer_dir(folder):
            return "folder", folder
        raise UserError(f"{folder}: no CLIP tokenizer there (vocab.json + merges.txt); fix tokenizer_path")
    if checkpoint.is_file():
        for candidate in sidecar_tokenizer_dirs(checkpoint, index):
            if _is_tokenizer_dir(candidate):
                return "sidecar", candidate
    host = host_tokenizer_dir(host_root, index)
    if host is not None:
        return "host", host
    cached = hf_cache_dir(cache_id) if cache_id else None
    if cached is not None:
        return "cache", cached
    bpe = open_clip_bpe_path()
    if bpe is not None:
        return "open_clip", bpe
    raise UserError(
        f"{checkpoint}: no CLIP tokenizer available offline; set tokenizer_path to a folder with vocab.json and "
        f"merges.txt, put one in {sidecar_tokenizer_dirs(checkpoint, index)[0].name}/ beside the checkpoint, "
        "or pip install open_clip_torch (it ships the BPE file)"
    )


def load_clip_tokenizer(folder: Path | None, checkpoint: Path, pad_token: str | None = None, index: int = 0,
                        cache_id: str | None = None):
    """A ``CLIPTokenizer`` from ``find_clip_tokenizer``'s source; UserError naming what to provide otherwise."""
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": pad_token} if pad_token else {}
    source, path = find_clip_tokenizer(folder, checkpoint, index, cache_id)
    if source == "open_clip":
        path = tokenizer_dir_from_bpe(path)
    if source in ("cache", "open_clip"):
        return CLIPTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
    # A saved tokenizer knows its own pad token; bare vocab files get the architecture's.
    own = (path / "tokenizer_config.json").is_file()
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True, **({} if own else kwargs))


def hf_cache_dir(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local HF cache if it holds a CLIP tokenizer, else None.

    Asked file by file: some transformers versions build an empty tokenizer instead of failing.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    vocab = try_to_load_from_cache(repo_id, "vocab.json")
    merges = try_to_load_from_cache(repo_id, "merges.txt")
    if isinstance(vocab, str) and isinstance(merges, str) and Path(vocab).parent == Path(merges).parent:
        return Path(vocab).parent
    return None


def open_clip_bpe_path() -> Path | None:
    """The BPE vocabulary file inside an installed open_clip package, found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / _OPEN_CLIP_BPE
        if candidate.is_file():
            return candidate
    return None


def tokenizer_dir_from_bpe(bpe: Path, out: Path | None = None) -> Path:
    """Write vocab.json + merges.txt for CLIPTokenizer from open_clip's BPE file (CLIP's own construction)."""
    out = out or Path(tempfile.mkdtemp(prefix="lora-bridge-clip-tok-"))
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(bpe, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1] if len(m.split()) == 2]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
    return out


def _is_t5_tokenizer_dir(folder: Path | None) -> bool:
    return folder is not None and folder.is_dir() and any(
        (folder / name).is_file() for name in ("tokenizer.json", "spiece.model"))


def find_t5_tokenizer(folder: Path | None, beside: list[Path], cache_id: str | None = None) -> Path:
    """The T5 tokenizer folder: ``folder`` (tokenizer_path), a ``tokenizer_2/`` beside one of the ``beside``
    files (Forge keeps one under ``backend/huggingface/black-forest-labs/FLUX.1-dev``), or the HF cache's copy."""
    if folder is not None:
        if _is_t5_tokenizer_dir(folder):
            return folder
        raise UserError(f"{folder}: no T5 tokenizer there (spiece.model or tokenizer.json); fix tokenizer_path")
    for path in beside:
        for candidate in (path.with_name(f"{path.stem}.tokenizer_2"), path.parent / "tokenizer_2"):
            if _is_t5_tokenizer_dir(candidate):
                return candidate
    if cache_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        for name in ("tokenizer.json", "spiece.model"):
            found = try_to_load_from_cache(cache_id, name) if try_to_load_from_cache else None
            if isinstance(found, str):
                return Path(found).parent
    raise UserError(f"{beside[0]}: no T5 tokenizer available offline; set tokenizer_path to a folder with "
                    "tokenizer_2/ (spiece.model or tokenizer.json), e.g. Forge's "
                    "backend/huggingface/black-forest-labs/FLUX.1-dev, or put tokenizer_2/ beside the model")


def load_t5_tokenizer(folder: Path | None, beside: list[Path], cache_id: str | None = None):
    """The T5 tokenizer from ``find_t5_tokenizer``'s folder, offline."""
    from transformers import AutoTokenizer, T5TokenizerFast

    path = find_t5_tokenizer(folder, beside, cache_id)
    if (path / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if (path / "tokenizer.json").is_file():
        return T5TokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    return T5TokenizerFast(vocab_file=str(path / "spiece.model"))
