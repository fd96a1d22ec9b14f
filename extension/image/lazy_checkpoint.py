"""A single-file ``.safetensors`` checkpoint read one tensor at a time, and models built straight from it.

Reading a whole checkpoint and then building the models holds both at once (2 GB of fp16 file plus
4 GB of fp32 models for SD1.5). Here a tensor is read from the file only when a converter asks for
it, with plain reads (no memory map, so the page cache never counts in the process's RSS), and the
models are created without weights (``accelerate.init_empty_weights``) and take the read tensors
as their parameters (``load_state_dict(assign=True)``): no random initialisation, no second copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from .._converters import converters
from ..errors import UserError

_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class LazyCheckpoint(Mapping):
    """``{name: tensor}`` of a safetensors file; each access reads that tensor (a fresh CPU tensor)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            header, self._start = converters.safetensors_io.read_header(self.path)
        except converters.AdapterError as exc:
            raise UserError(f"{path}: cannot read the checkpoint ({exc}); is the file complete?") from None
        self._entries = {k: v for k, v in header.items() if k != "__metadata__"}
        unknown = sorted({v["dtype"] for v in self._entries.values()} - set(_TORCH_DTYPES))
        if unknown:
            raise UserError(f"{path}: tensors of dtype {unknown[0]} are not supported; convert the checkpoint to "
                            "fp16 or fp32")

    def __getitem__(self, name: str) -> torch.Tensor:
        info = self._entries[name]
        tensor = torch.empty(info["shape"], dtype=_TORCH_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        if end > begin:
            view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(self._start + begin)
                if handle.readinto(view) != end - begin:
                    raise UserError(f"{self.path}: truncated at tensor {name}; is the file complete?")
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def shapes(self, prefix: str = "") -> dict[str, tuple[int, ...]]:
        """{name without ``prefix``: shape} of the tensors whose name starts with ``prefix``."""
        return {k[len(prefix):]: tuple(v["shape"]) for k, v in self._entries.items() if k.startswith(prefix)}

    def dtype_of(self, prefix: str) -> torch.dtype | None:
        """The dtype of the first floating tensor whose name starts with ``prefix`` (None if there is none)."""
        for name, info in self._entries.items():
            dtype = _TORCH_DTYPES[info["dtype"]]
            if name.startswith(prefix) and dtype.is_floating_point and len(info["shape"]) > 1:
                return dtype
        return None


def empty_model(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``factory()`` with its parameters on the meta device (buffers real): nothing is allocated or drawn."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def assign_weights(model: torch.nn.Module, state: dict[str, torch.Tensor],
                   dtype_of: Callable[[str], torch.dtype]) -> list[str]:
    """Make ``state``'s tensors (cast to ``dtype_of(name)``) the model's parameters; returns missing names.

    ``state`` is emptied on the way, so each file-dtype tensor is freed as soon as its cast exists.
    """
    own = model.state_dict(keep_vars=True)
    for name in list(state):
        value = state.pop(name)
        if name not in own:
            continue
        target = own[name]
        if value.is_floating_point():
            value = value.to(dtype_of(name))
        if tuple(value.shape) != tuple(target.shape):
            raise UserError(f"weight {name} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}; "
                            "put the checkpoint's LDM config beside it as <stem>.yaml")
        _set_tensor(model, name, value)
    return [n for n, p in model.named_parameters() if p.is_meta]


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=old.requires_grad if old is not None
                                                      else True)
    else:
        module._buffers[leaf] = value


class PrefixView(Mapping):
    """The tensors of ``checkpoint`` under ``prefix``, named without it (read on access, like the checkpoint)."""

    def __init__(self, checkpoint: Mapping, prefix: str) -> None:
        self.checkpoint = checkpoint
        self.prefix = prefix
        self._names = [k[len(prefix):] for k in checkpoint if k.startswith(prefix)]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.checkpoint[self.prefix + name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.prefix + name in self.checkpoint
