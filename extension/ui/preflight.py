"""Checks a training start makes before anything happens (no lock, no unload, no folder, no thread).

Everything that can be known from the config, the base model's header, where its tokenizers come
from and a scan of the dataset is checked here, so a bad start is refused with one line (tab
message, REST 400) instead of answering ``running`` and failing later in ``/status``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._converters import converters
from ..errors import UserError

TEXT_TASK = "text-generation"
SD_ARCHS = ("sd1", "sd2", "sd2-v", "sdxl")


def check_start(config: Any, lora_dir: str | Path | None = None,
                tokenizer_dirs: dict[str, Path] | None = None, flux: bool = True) -> tuple[Any, str]:
    """(TrainConfig, one-line summary of the dataset) for ``config`` (dict or TrainConfig); UserError if bad.

    ``lora_dir`` is where the host publishes a finished image LoRA (an existing file there is refused
    unless ``overwrite``); the output folder's name length, writability and lock are checked too.
    ``tokenizer_dirs`` (arch -> folder with ``tokenizer/`` and ``tokenizer_2/``) are the host's own
    CLIP tokenizers; an image run without ``tokenizer_path`` whose checkpoint has no sidecar gets the
    host's folder as its ``tokenizer_path``. ``flux``: the host runs Flux.1 (A1111 1.10 does not, so a
    Flux base is refused there; Convert still converts Flux LoRAs).
    """
    from ..config import config_from_dict, require_keys
    from ..training.run_folder import check_output

    cfg = config_from_dict(config, "start") if isinstance(config, dict) else config
    require_keys(cfg, "start")
    check_output(cfg, lora_dir if str(cfg.task_type) != TEXT_TASK else None)
    if str(cfg.task_type) == TEXT_TASK:
        _check_text_base(Path(str(cfg.base_model)).expanduser(), cfg)
        _check_text_fit(cfg)
        return cfg, _check_text_data(Path(str(cfg.train_data_dir)).expanduser(), str(cfg.data_format or "auto"))
    if _flux_run(cfg):
        from ..models.flux_loader import check_flux_inputs

        if not flux:
            raise UserError(f"{Path(str(cfg.base_model)).name}: is a Flux.1 model, which A1111 1.10 cannot run, so "
                            "LoRA Bridge does not train on it here; train in Forge or with lora-bridge train (Convert "
                            "handles Flux LoRAs)")
        cfg = check_flux_inputs(cfg, (tokenizer_dirs or {}).get("flux"))
        return cfg, _check_image_data(cfg)
    arch = _check_image_base(cfg)
    if arch is not None:
        cfg = _check_tokenizers(cfg, arch, tokenizer_dirs or {})
    return cfg, _check_image_data(cfg)


def _flux_run(cfg: Any) -> bool:
    """True for a Flux.1 base: the host's refusal, then the Flux loader's checks of the part files
    (``flux_loader.check_flux_inputs``, the same the CLI runs); UserError for a missing base."""
    from ..models.flux_loader import is_flux_run

    base = Path(str(cfg.base_model)).expanduser()
    if not base.exists():
        raise UserError(f"{base}: base model not found; pick a checkpoint in Model or give a full path")
    return is_flux_run(cfg)


def _check_image_base(cfg: Any) -> str | None:
    """The base's architecture (None for a .ckpt, read only by the engine); UserError when it is no SD base
    (``_flux_run`` has checked that it exists)."""
    base = Path(str(cfg.base_model)).expanduser()
    if base.is_file() and base.suffix.lower() not in (".safetensors", ".ckpt"):
        raise UserError(f"{base}: not a Stable Diffusion checkpoint (.safetensors/.ckpt or a diffusers folder)")
    wanted = str(getattr(cfg, "model_arch", "auto") or "auto")
    if base.is_file() and base.suffix.lower() == ".ckpt":
        # reading a pickle's architecture means loading it: the engine does that (weights_only)
        return wanted if wanted in SD_ARCHS else None
    arch = _base_arch(base, "sd", "the base model")
    if arch not in SD_ARCHS and wanted == "auto":
        raise UserError(f"{base}: not an SD1/SD2/SDXL checkpoint (found {arch or 'no known architecture'}); "
                        "pick a Stable Diffusion checkpoint, or set model_arch")
    return arch if arch in SD_ARCHS else (wanted if wanted in SD_ARCHS else None)


def _check_tokenizers(cfg: Any, arch: str, host_dirs: dict[str, Path]) -> Any:
    """Each text encoder's CLIP tokenizer is found, in the loader's search order, before the run starts.

    The host's own copy (``host_dirs[arch]``, complete for every encoder) comes after
    ``tokenizer_path``, a diffusers folder's own and a sidecar beside the checkpoint; when it is the
    source, the returned config names it as ``tokenizer_path`` (what the loader then reads).
    """
    import dataclasses

    from ..models.sd_loader import shipped_config
    from ..models.tokenizers import SUBFOLDERS, find_clip_tokenizer, host_tokenizer_dir, tokenizer_subfolder

    base = Path(str(cfg.base_model)).expanduser()
    specs = shipped_config(arch).get("text_encoders", [])
    root = Path(str(cfg.tokenizer_path)).expanduser() if cfg.tokenizer_path else None
    if root is None and base.is_dir() and all((base / SUBFOLDERS[i]).is_dir() for i in range(len(specs))):
        return cfg  # a diffusers folder with its own tokenizers
    host_root = host_dirs.get(arch) or host_dirs.get(arch.split("-")[0])
    if host_root is not None and not all(host_tokenizer_dir(host_root, i) for i in range(len(specs))):
        host_root = None
    sources = set()
    for index, spec in enumerate(specs):
        folder = tokenizer_subfolder(root, index) if root is not None else None
        cache_id = None if base.is_dir() else spec.get("tokenizer_cache")  # the folder loader reads no cache
        sources.add(find_clip_tokenizer(folder, base, index, cache_id, host_root)[0])
    if "host" in sources:
        return dataclasses.replace(cfg, tokenizer_path=str(host_root))
    return cfg


def _base_arch(base: Path, family: str, what: str) -> str | None:
    """The base's architecture; a file the format layer cannot parse is one UserError line."""
    try:
        arch, _ = converters.base_module_shapes(base, family)
    except converters.AdapterError:
        raise  # already one line naming the file
    except Exception as exc:
        raise UserError(f"{base}: cannot read {what} ({type(exc).__name__}: {exc})") from None
    return arch


def _check_image_data(cfg: Any) -> str:
    from ..data.lint import enforce_bad_data, lint_dataset
    from .dataset_view import image_folder

    folder = image_folder(cfg.train_data_dir)
    report = lint_dataset(folder, cfg)
    enforce_bad_data(report, str(cfg.bad_data))
    summary = f"{len(report.good)} usable image(s)"
    if report.problems:
        summary += f", {len(report.problems)} skipped: {report.summary()}"
    return summary


def _check_text_base(base: Path, cfg: Any) -> None:
    if not base.exists():
        raise UserError(f"{base}: base model not found; pick a GGUF/GGML file in Text LoRA or give a full path")
    if base.is_dir():
        if not (base / "config.json").is_file():
            raise UserError(f"{base}: not a text model folder (no config.json); give a .gguf or GGML .bin file")
        return
    with open(base, "rb") as handle:
        magic = handle.read(4)
    if magic == b"GGUF":
        arch = _base_arch(base, "llm", "the GGUF header")
        if not arch:
            raise UserError(f"{base}: GGUF file without a known LLaMA-family architecture")
        return
    from ..text.ggml_legacy import GGML_MAGICS

    if int.from_bytes(magic, "little") in GGML_MAGICS:
        _check_ggml_base(base, cfg)
        return
    hint = " (this looks like a Stable Diffusion checkpoint; train it in the image tabs)" \
        if base.suffix.lower() in (".safetensors", ".ckpt") else ""
    raise UserError(f"{base}: not a GGUF or legacy GGML LLaMA model{hint}; give a .gguf base")


def _check_ggml_base(base: Path, cfg: Any) -> None:
    """The engine's GGML -> GGUF header check (KV heads vs the K weights' shape), from the memory-mapped file."""
    from ..text.base_gguf import ggml_options
    from ..text.ggml_legacy import gguf_metadata, read_ggml

    gguf_metadata(read_ggml(base), **ggml_options(cfg))


def _check_text_fit(cfg: Any) -> None:
    """The engine's memory fit check from the base's header (``memory_plan.check_fit``): no job for a run that
    cannot fit."""
    from ..text.engine import training_device
    from ..text.memory_plan import check_fit

    check_fit(cfg, training_device())


def _check_text_data(path: Path, data_format: str) -> str:
    from ..text.data import check_text_data

    count, files = check_text_data(path, data_format)
    if not count:
        raise UserError(f"{path}: no training text (empty file); add text, one sample per line or paragraph")
    return f"{count} sample(s) in {files} file(s)"
