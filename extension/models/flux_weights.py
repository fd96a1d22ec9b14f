"""Flux.1 transformer weights: BFL single-file names <-> diffusers ``FluxTransformer2DModel`` names, and the
model config read from the weights' shapes.

The renaming is the format layer's table (``converters.flux_names``: fused ``qkv``/``linear1`` rows,
the swapped ``final_layer.adaLN_modulation.1`` halves) applied to weights and biases, plus the q/k
RMS-norm scales, which carry no LoRA and so are not in that table. It is what diffusers'
single-file loader does, without its full-size widths written into the split (``inner_dim = 3072``),
so reduced Flux-shaped models load too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from .._converters import converters
from ..errors import UserError

_names = converters.flux_names


def _norm_names(n_double: int, n_single: int) -> dict[str, str]:
    """{BFL ``*.scale``: diffusers ``*.weight``} of the q/k norms of every block (``flux_names.QK_NORMS``)."""
    counts = {"double_blocks": n_double, "single_blocks": n_single}
    return {f"{bfl_head}.{n}.{bfl}.scale": f"{head}.{n}.{ours}.weight"
            for bfl_head, (head, norms) in _names.QK_NORMS.items() for n in range(counts[bfl_head])
            for bfl, ours in norms.items()}


def block_counts(keys) -> tuple[int, int]:
    """(double blocks, single blocks) of a BFL transformer's keys."""
    def count(head: str) -> int:
        found = {int(m.group(1)) for k in keys if (m := re.match(rf"{head}\.(\d+)\.", k))}
        return max(found) + 1 if found else 0
    return count("double_blocks"), count("single_blocks")


def _split(bfl, value: torch.Tensor, width: int) -> list[torch.Tensor]:
    if bfl.swapped:
        value = torch.cat(value.chunk(2)[::-1])
    if not bfl.fused:
        return [value]
    sizes = _names.part_sizes(bfl, int(value.shape[0]), width)
    return list(torch.split(value, sizes))


def bfl_to_diffusers(bfl: Mapping[str, torch.Tensor], width: int,
                     source: object) -> dict[str, tuple[str, Callable[[], torch.Tensor]]]:
    """{diffusers name: (BFL key, loader of its tensor)} for a BFL state dict of a transformer ``width`` wide.

    Tensors are read when a loader is called (a fused one once per part). Every BFL key must be
    used: an unknown one stops the load with one line naming it.
    """
    n_double, n_single = block_counts(bfl)
    out: dict[str, tuple[str, Callable[[], torch.Tensor]]] = {}
    used: set[str] = set()
    for path, module in _names.bfl_modules().items():
        for param in ("weight", "bias"):
            key = f"{path}.{param}"
            if key not in bfl:
                continue
            used.add(key)
            for i, part in enumerate(module.parts):
                name = f"{part[len(_names.TRANSFORMER):]}.{param}"
                out[name] = key, lambda key=key, i=i, module=module: _split(module, bfl[key], width)[i]
    for key, name in _norm_names(n_double, n_single).items():
        if key in bfl:
            used.add(key)
            out[name] = key, lambda key=key: bfl[key]
    unknown = sorted(set(bfl) - used)
    if unknown:
        raise UserError(f"{source}: {unknown[0]} is not a tensor of a Flux.1 transformer; is this a Flux.1 "
                        "dev/schnell file?")
    return out


def diffusers_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The BFL single-file state dict of a diffusers ``FluxTransformer2DModel`` state dict (the format layer's
    ``flux_names.bfl_state_dict`` on torch tensors)."""
    return _names.bfl_state_dict(state, torch.cat)


def rope_axes(head_dim: int) -> list[int]:
    """Flux's rope axes for ``head_dim``: (16, 56, 56) at 128; smaller heads scale the same split, even sizes."""
    first = max(2, head_dim // 8)
    rest = head_dim - first
    second = rest // 2 - (rest // 2) % 2
    return [first, second, rest - second]


def transformer_config(shapes: Mapping[str, tuple[int, ...]], shipped: dict, source: object) -> dict:
    """``FluxTransformer2DModel`` keyword arguments from the BFL tensors' shapes (rope axes from ``shipped``
    at the real head size)."""
    n_double, n_single = block_counts(shapes)
    hidden, in_channels = shapes["img_in.weight"]
    head_dim = int(shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0])
    mlp = int(shapes["double_blocks.0.img_mlp.0.weight"][0])
    if hidden % head_dim or mlp != 4 * hidden:
        raise UserError(f"{source}: a transformer of width {hidden}, head size {head_dim} and MLP {mlp} is not "
                        "Flux.1-shaped (MLP 4x the width)")
    real = shipped["transformer"]
    return dict(patch_size=1, in_channels=int(in_channels), num_layers=n_double, num_single_layers=n_single,
                attention_head_dim=head_dim, num_attention_heads=hidden // head_dim,
                joint_attention_dim=int(shapes["txt_in.weight"][1]),
                pooled_projection_dim=int(shapes["vector_in.in_layer.weight"][1]),
                guidance_embeds="guidance_in.in_layer.weight" in shapes,
                axes_dims_rope=list(real["axes_dims_rope"]) if head_dim == real["attention_head_dim"]
                else rope_axes(head_dim))
