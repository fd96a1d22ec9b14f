"""Flux.1 naming: canonical (diffusers) module paths <-> BFL/ComfyUI paths and kohya/sd-scripts names.

Canonical names are diffusers' ``FluxTransformer2DModel`` paths under ``transformer.``, the CLIP-L
encoder under ``text_encoder.`` (with ``text_model.``) and the T5 encoder under ``text_encoder_2.``,
as ``FluxPipeline`` names its components.

BFL's own layout (the single-file checkpoints Forge and ComfyUI load) fuses some of diffusers'
layers into one: ``img_attn.qkv`` is ``attn.to_q|to_k|to_v`` stacked by output rows,
``txt_attn.qkv`` the ``add_*_proj`` twins, and a single block's ``linear1`` is
``attn.to_q|to_k|to_v|proj_mlp``. ``final_layer.adaLN_modulation.1`` is ``norm_out.linear`` with
its two output halves swapped (shift, scale vs scale, shift). The table below is that mapping,
the same one diffusers' single-file loader applies to the weights; part sizes come from shapes
(q, k, v are as wide as the block's input, the MLP part takes the rest).

kohya/sd-scripts names are ``lora_unet_`` + the BFL path with ``.`` as ``_`` (OneTrainer writes
``lora_transformer_`` + the diffusers path instead, unfused); text encoders are
``lora_te1_`` (CLIP-L) and ``lora_te3_`` (T5; older sd-scripts wrote ``lora_te2_``). ComfyUI's
spelling is ``diffusion_model.`` + the BFL path, ``text_encoders.clip_l.transformer.`` and
``text_encoders.t5xxl.transformer.``. Reverse lookups go through tables, never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

MAX_DOUBLE = 64
MAX_SINGLE = 128
MAX_T5_LAYERS = 48

# BFL leaf in a double block -> diffusers leaves in transformer_blocks.N (several = fused by rows).
_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
SWAPPED_HALVES = frozenset({"final_layer.adaLN_modulation.1"})  # output rows (shift, scale) vs (scale, shift)
BFL_HEADS = ("double_blocks.", "single_blocks.") + tuple(_TOP)
T5_LEAVES = ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v",
             "layer.0.SelfAttention.o", "layer.1.DenseReluDense.wi_0", "layer.1.DenseReluDense.wi_1",
             "layer.1.DenseReluDense.wo", "layer.1.DenseReluDense.wi")
KOHYA_UNET = "lora_unet_"
ONETRAINER = "lora_transformer_"  # OneTrainer: diffusers paths with ``.`` as ``_`` (read only)
KOHYA_CLIP = "lora_te1_"
KOHYA_T5 = ("lora_te3_", "lora_te2_")  # sd-scripts now writes te3 (as ComfyUI maps it); older files te2
COMFY_UNET = "diffusion_model."
COMFY_CLIP = "text_encoders.clip_l.transformer."
COMFY_T5 = "text_encoders.t5xxl.transformer."
TRANSFORMER = "transformer."


@dataclass(frozen=True)
class BflModule:
    """One BFL module and the canonical modules it holds, in the order their output rows are stacked."""

    path: str
    parts: tuple[str, ...]
    swapped: bool = False

    @property
    def fused(self) -> bool:
        """True when several canonical modules share this one weight."""
        return len(self.parts) > 1


@lru_cache(maxsize=1)
def bfl_modules() -> dict[str, BflModule]:
    """Every LoRA-targetable BFL transformer module (a generous superset of real depths) by path."""
    out: dict[str, BflModule] = {}
    for bfl, diffusers in _TOP.items():
        out[bfl] = BflModule(bfl, (TRANSFORMER + diffusers,), bfl in SWAPPED_HALVES)
    for n in range(MAX_DOUBLE):
        for leaf, parts in _DOUBLE.items():
            path = f"double_blocks.{n}.{leaf}"
            out[path] = BflModule(path, tuple(f"{TRANSFORMER}transformer_blocks.{n}.{p}" for p in parts))
    for n in range(MAX_SINGLE):
        for leaf, parts in _SINGLE.items():
            path = f"single_blocks.{n}.{leaf}"
            out[path] = BflModule(path, tuple(f"{TRANSFORMER}single_transformer_blocks.{n}.{p}" for p in parts))
    return out


@lru_cache(maxsize=1)
def bfl_of_canonical() -> dict[str, tuple[BflModule, int]]:
    """Canonical transformer module -> (its BFL module, its index among that module's parts)."""
    return {part: (module, i) for module in bfl_modules().values() for i, part in enumerate(module.parts)}


def part_sizes(module: BflModule, out_rows: int, in_features: int) -> list[int]:
    """Output rows of each part of a BFL module whose weight is (out_rows, in_features)."""
    n = len(module.parts)
    if n == 1:
        return [out_rows]
    if module.path.endswith("linear1"):  # q, k, v are as wide as the hidden size, the MLP takes the rest
        return [in_features] * 3 + [out_rows - 3 * in_features]
    return [out_rows // n] * n


# BFL's qk-norm scales (base checkpoints carry them; never LoRA targets) -> diffusers' RMSNorm weights.
QK_NORMS = {"double_blocks": ("transformer_blocks", {
    "img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k"}),
    "single_blocks": ("single_transformer_blocks", {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"})}


def bfl_state_dict(state, cat) -> dict:
    """The BFL single-file state dict of a diffusers ``FluxTransformer2DModel`` state dict (torch or numpy
    arrays; ``cat(list)`` stacks them by rows): fused weights stacked, final modulation halves swapped."""
    out = {}
    for path, bfl in bfl_modules().items():
        names = [p[len(TRANSFORMER):] for p in bfl.parts]
        if names[0] + ".weight" not in state:
            continue
        for param in ("weight", "bias"):
            value = cat([state[f"{n}.{param}"] for n in names])
            if bfl.swapped:
                half = value.shape[0] // 2
                value = cat([value[half:], value[:half]])
            out[f"{path}.{param}"] = value
    for bfl_head, (head, norms) in QK_NORMS.items():
        n = 0
        while f"{head}.{n}.attn.norm_q.weight" in state:
            for bfl_norm, ours in norms.items():
                out[f"{bfl_head}.{n}.{bfl_norm}.scale"] = state[f"{head}.{n}.{ours}.weight"]
            n += 1
    return out


def is_flux_transformer_path(path: str) -> bool:
    """True for a diffusers ``FluxTransformer2DModel`` module path (without ``transformer.``)."""
    return TRANSFORMER + path in bfl_of_canonical()


def t5_module_names(max_layers: int = MAX_T5_LAYERS) -> list[str]:
    """Every LoRA-targetable T5 encoder module path (``encoder.block.N...``)."""
    return [f"encoder.block.{n}.{leaf}" for n in range(max_layers) for leaf in T5_LEAVES]
