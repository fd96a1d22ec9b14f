"""GGUF-quantized Flux.1 transformers in city96's layout (what Forge and ComfyUI-GGUF load), kept packed.

city96's files hold the BFL single-file tensors under their BFL names (``general.architecture`` =
``flux``): 1-D and tiny tensors in F32, the rest F16/BF16 or quantized by llama.cpp (Q8_0, Q4_0,
Q4_K, ...). Here each quantized matrix stays in its file blocks (the text engine's ``PackedWeight``,
memory-mapped, dequantized inside the layer's forward and backward by the same code that runs GGUF
LLaMA weights); a fused BFL matrix (``qkv``, ``linear1``) is split by rows, which are whole blocks.
The layer is a ``GGUFLinear``: an ``nn.Linear`` to PEFT (so LoRA wraps it as on any Flux layer)
whose forward is the packed matmul. Float tensors are read into float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from .._converters import converters
from ..errors import UserError
from ..text.quant import PackedLinear, PackedWeight

FLOAT_TYPES = ("F32", "F16", "BF16")


class GGUFLinear(torch.nn.Linear):
    """A frozen linear layer on a packed GGUF weight that PEFT treats as ``nn.Linear``."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None) -> None:
        torch.nn.Module.__init__(self)
        self.out_features, self.in_features = weight.shape
        self.packed = PackedLinear(weight, bias)
        # PEFT reads the base layer's device and dtype from ``weight``: an empty float32 stand-in.
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed(x)


class GGUFTensors(Mapping):
    """{BFL name: tensor} of a city96 Flux GGUF: float32 for float types, the raw block rows (uint8) otherwise."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        reader = converters.llm_base.open_gguf(self.path)
        arch = converters.llm_base.gguf_field(reader, "general.architecture")
        if arch != "flux":
            raise UserError(f"{path}: a GGUF of architecture {arch!r}, not a Flux.1 transformer (city96's "
                            "layout has general.architecture = flux)")
        self.infos = {t.name: t for t in reader.tensors}

    def qtype(self, name: str) -> str:
        """The GGML type name of tensor ``name`` (F16, Q4_0, ...)."""
        return self.infos[name].tensor_type.name

    def __getitem__(self, name: str) -> torch.Tensor:
        gguf = converters.gguf_py.installed_gguf()

        info = self.infos[name]
        shape = tuple(int(d) for d in reversed(info.shape.tolist()))
        if self.qtype(name) in FLOAT_TYPES:
            values = gguf.quants.dequantize(np.asarray(info.data), info.tensor_type)
            return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memory map: never written
            return torch.from_numpy(np.asarray(info.data).view(np.uint8).reshape(shape[0], -1))

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def shapes(self, prefix: str = "") -> dict[str, tuple[int, ...]]:
        """{name: torch-order shape} (city96's files have no prefix)."""
        return {k: tuple(int(d) for d in reversed(v.shape.tolist())) for k, v in self.infos.items()}

    def dtype_of(self, prefix: str) -> None:
        """Packed weights keep their own types: nothing for the float storage rule to follow."""
        return None


def pack_linears(model: torch.nn.Module, tensors: GGUFTensors, pairs: dict) -> dict:
    """Put a ``GGUFLinear`` wherever a quantized BFL matrix feeds a linear layer; the float rest as loaders.

    ``pairs`` is ``flux_weights.bfl_to_diffusers``' {diffusers name: (BFL key, loader)}.
    """
    rest = {}
    for name, (key, load) in pairs.items():
        qtype = tensors.qtype(key)
        if qtype in FLOAT_TYPES or not name.endswith(".weight"):
            rest[name] = load
            continue
        gguf = converters.gguf_py.installed_gguf()

        module_name = name[: -len(".weight")]
        layer = model.get_submodule(module_name)
        bias = pairs.get(module_name + ".bias")
        packed = PackedWeight(load().contiguous(), gguf.GGMLQuantizationType[qtype],
                              (layer.out_features, layer.in_features))
        parent, _, leaf = module_name.rpartition(".")  # no Module.set_submodule before torch 2.4 (Forge: 2.3.1)
        setattr(model.get_submodule(parent), leaf, GGUFLinear(packed, None if bias is None else bias[1]().float()))
    return {n: load for n, load in rest.items() if not _packed_bias(model, n)}


def _packed_bias(model: torch.nn.Module, name: str) -> bool:
    module_name, _, leaf = name.rpartition(".")
    return leaf == "bias" and isinstance(model.get_submodule(module_name), GGUFLinear)
