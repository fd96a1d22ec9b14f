"""The format layer's public functions: load, save, convert, inspect, validate against a base."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import AdapterError
from .formats import FORMATS, WRITABLE, WriteOptions, detect_format, format_for_destination, peft
from .low_rank import approximate_as_lora
from .model import IMAGE_FAMILIES, LoraAdapter, LoraModule, LycorisModule
from .sanity import adapter_problems


def load_adapter(path: str | Path, arch: str | None = None, format: str | None = None,
                 base: str | Path | None = None) -> LoraAdapter:
    """Read any supported adapter into the canonical form; ``arch`` overrides detection.

    ``base`` is passed to readers that need facts from the base model (``READ_USES_BASE``).
    """
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise AdapterError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if base is not None and getattr(FORMATS[fmt], "READ_USES_BASE", False):
        adapter = FORMATS[fmt].read(Path(path), arch, base=Path(base))
    else:
        adapter = FORMATS[fmt].read(Path(path), arch)
    if not adapter.modules:
        raise AdapterError(f"{path}: contains no LoRA modules")
    adapter.source_format = fmt
    return adapter


def save_adapter(
    adapter: LoraAdapter,
    path: str | Path,
    to: str | None = None,
    base: str | Path | None = None,
    **options: object,
) -> Path:
    """Write ``adapter`` as format ``to`` (default: from the path), checked against ``base`` if given.

    Nothing is written when validation fails; writes are atomic.
    """
    target = to or format_for_destination(path)
    if target not in WRITABLE:
        raise AdapterError(f"cannot write format {target!r}; writable: {', '.join(WRITABLE)}")
    if options.get("arch"):
        adapter.arch = str(options["arch"])
    if base is not None:
        problems = check_against_base(adapter, base)
        if problems:
            raise AdapterError(f"{path}: adapter does not fit base {base}: {problems[0]} ({len(problems)} problem(s))")
    if base is not None:
        options.setdefault("base", str(base))
    return FORMATS[target].write(adapter, Path(path), WriteOptions(**options))


def convert(src: str | Path, dst: str | Path, to: str | None = None, base: str | Path | None = None,
            arch: str | None = None, svd_rank: int | None = None, report: dict | None = None,
            **options: object) -> Path:
    """Read ``src`` in whatever format it is and write it to ``dst`` as ``to``.

    ``svd_rank``: replace LoHa/LoKr modules, and Flux modules of a higher rank as BFL fuses them, by
    their best rank-R LoRA (``low_rank.approximate_as_lora``); the worst relative error is put into
    ``report`` (``svd_worst_rel_error``, ``svd_worst_module``, ``svd_modules``) when a dict is given.
    ``force=True`` replaces an existing destination only if it is an adapter (``check_replaceable``).
    """
    if options.get("force"):
        check_replaceable(Path(dst), folder=(to or format_for_destination(dst)) == "peft")
    adapter = load_adapter(src, arch=arch, base=base)
    problems = adapter_problems(adapter)
    if problems:
        more = f" (and {len(problems) - 1} more; lora-bridge inspect lists them)" if len(problems) > 1 else ""
        raise AdapterError(f"{src}: {problems[0]}{more}; nothing was converted")
    if svd_rank is not None:
        stats = approximate_as_lora(adapter, svd_rank)
        if report is not None:
            report.update(stats)
    return save_adapter(adapter, dst, to=to, base=base, arch=arch, **options)


# Never replaced by --force, whatever they hold: a converted adapter must not land where code runs from.
CODE_SUFFIXES = frozenset((".py", ".pyc", ".pyo", ".pyw", ".pyi", ".pth", ".pyx", ".so", ".pyd", ".dll", ".dylib",
                           ".exe", ".sh", ".bash", ".zsh", ".bat", ".cmd", ".ps1", ".js", ".mjs", ".cjs", ".html",
                           ".htm", ".css", ".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".txt", ".md"))


def check_replaceable(dst: Path, folder: bool) -> None:
    """Refuse ``--force`` onto anything but an adapter of the same kind (file for file, folder for folder).

    A file must be a non-code file this tool reads as an adapter; a folder must be a PEFT adapter
    holding nothing but its files (``peft.ADAPTER_FILES``, and the SD component subfolders).
    Links and special files are refused: what they point at is not ours to replace.
    """
    if not os.path.lexists(dst):
        return
    keep = "; --force replaces only a LoRA adapter: choose another destination or remove it yourself"
    if dst.is_symlink():
        raise AdapterError(f"{dst}: is a link{keep}")
    if dst.is_dir() != folder or not (dst.is_dir() or dst.is_file()):
        kind = "folder" if dst.is_dir() else "file" if dst.is_file() else "special file"
        raise AdapterError(f"{dst}: is a {kind}, the output would be a {'folder' if folder else 'file'}{keep}")
    if dst.is_file() and dst.suffix.lower() in CODE_SUFFIXES:
        raise AdapterError(f"{dst}: is a {dst.suffix} file{keep}")
    if dst.is_dir():
        stray = peft.non_adapter_entry(dst)
        if stray is not None:
            raise AdapterError(f"{dst}: holds {stray.relative_to(dst)}, which is not part of an adapter{keep}")
    try:
        load_adapter(dst)
    except Exception:
        raise AdapterError(f"{dst}: exists and is not an adapter LoRA Bridge can read{keep}") from None


def base_module_shapes(base: str | Path, family: str | None = None) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(architecture, {canonical module name: weight shape}) of a base model file or folder."""
    from .base_models import read_base_shapes

    return read_base_shapes(Path(base), family)


def _expected_shapes(name: str, module: LoraModule | LycorisModule) -> tuple[int, ...]:
    """The base weight shape an adapter module implies."""
    if isinstance(module, LycorisModule):
        return tuple(module.shape)
    if module.is_embedding:
        return (int(module.down.shape[1]), int(module.up.shape[0]))
    return (int(module.up.shape[0]),) + tuple(int(d) for d in module.down.shape[1:])


def check_against_base(adapter: LoraAdapter, base: str | Path) -> list[str]:
    """Every way ``adapter`` does not fit ``base``: missing modules, shape mismatches, wrong arch."""
    return check_against_shapes(adapter, *base_module_shapes(base, adapter.family))


def check_against_shapes(adapter: LoraAdapter, base_arch: str | None, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """``check_against_base`` against a base's (architecture, {canonical module: weight shape}) read already
    (a Flux.1 run's transformer and CLIP-L may come from different files)."""
    problems: list[str] = []
    if adapter.arch and base_arch and _arch_group(adapter.arch) != _arch_group(base_arch):
        problems.append(f"adapter is for {adapter.arch}, base is {base_arch}")
    for name, module in adapter.modules.items():
        if isinstance(module, LoraModule) and module.rank != module.up.shape[1]:
            problems.append(f"{name}: lora_A rank {module.rank} != lora_B rank {module.up.shape[1]}")
            continue
        if name not in shapes:
            problems.append(f"{name}: no such module in the base")
            continue
        want = tuple(shapes[name])
        got = _expected_shapes(name, module)
        if len(want) == 4 and len(got) == 2:
            got = got + (1, 1)
        if got != want:
            problems.append(f"{name}: adapter implies weight {got}, base has {want}")
    return problems


def _arch_group(arch: str) -> str:
    """Architectures whose adapters are interchangeable share a group."""
    return {"sd2-v": "sd2", "mistral": "llama"}.get(arch, arch)


def _target_name(module_name: str) -> str:
    """The layer name a user targets: ``to_q``, ``q_proj``; ``to_out.0`` keeps its index."""
    parts = module_name.split(".")
    if parts[-1].isdigit() and len(parts) > 1:
        return ".".join(parts[-2:])
    return parts[-1]


def inspect_adapter(path: str | Path, base: str | Path | None = None) -> dict:
    """A JSON-ready summary: format, arch, ranks, alphas, modules, dtypes, metadata, base fit."""
    adapter = load_adapter(path, base=base)
    targets = sorted({_target_name(name) for name in adapter.modules})
    components: dict[str, int] = {}
    for name in adapter.modules:
        prefix = name.split(".", 1)[0] if adapter.family in IMAGE_FAMILIES else "model"
        components[prefix] = components.get(prefix, 0) + 1
    dtypes = sorted({str(np.asarray(m.up if isinstance(m, LoraModule) else next(iter(m.factors.values()))).dtype)
                     for m in adapter.modules.values()})
    report = {
        "path": str(path),
        "format": adapter.source_format,
        "arch": adapter.arch,
        "family": adapter.family,
        "modules": len(adapter.modules),
        "components": components,
        "ranks": sorted(adapter.ranks()),
        "alphas": sorted(adapter.alphas()),
        "targets": targets,
        "dtypes": dtypes,
        "dora": any(m.magnitude is not None for m in adapter.modules.values()),
        "algos": sorted({m.algo if isinstance(m, LycorisModule) else "lora" for m in adapter.modules.values()}),
        "alpha_form": adapter.alpha_form,
        "fused": dict(adapter.fused),
        "full_weights": sorted(adapter.full_weights),
        "metadata": adapter.metadata,
        "problems": adapter_problems(adapter),
    }
    if adapter.family == "flux":
        from .flux_base import adapter_variant

        report["variant"], report["variant_from"] = adapter_variant(adapter, base)
    if base is not None:
        report["base"] = str(base)
        report["base_problems"] = check_against_base(adapter, base)
    return report
