"""Stable Diffusion naming: canonical (diffusers/transformers) module paths <-> LDM and kohya names.

Canonical names are ``unet.<diffusers path>``, ``text_encoder.<transformers path>`` and
``text_encoder_2.<transformers path>`` with CLIP paths always carrying ``text_model.``.

kohya names: prefix + path with ``.`` replaced by ``_``. SD1/SD2 UNets use diffusers paths,
SDXL UNets use LDM paths (the only ones A1111 maps for SDXL). Text encoders are ``lora_te`` for
SD1/SD2 and ``lora_te1``/``lora_te2`` for SDXL.

The reverse direction never guesses where an underscore was a dot: a table of every module name
the real layouts can have (generated from the block grammar of the diffusers UNet and the CLIP
encoder, generously sized) is mapped forward once and inverted.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import AdapterError

# Module slots inside blocks, as diffusers names them.
RESNET_LEAVES = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
ATTN_LEAVES = ("to_q", "to_k", "to_v", "to_out.0")
TRANSFORMER_LEAVES = tuple(f"{a}.{leaf}" for a in ("attn1", "attn2") for leaf in ATTN_LEAVES) + (
    "ff.net.0.proj",
    "ff.net.2",
)
CLIP_LEAVES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
# diffusers resnet slot -> LDM ResBlock slot
_RESNET_LDM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "norm1": "in_layers.0",
    "norm2": "out_layers.0",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP_LDM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "conv_norm_out": "out.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
TE_PREFIX = {"sd1": "lora_te", "sd2": "lora_te", "sd2-v": "lora_te"}
SDXL_TE_PREFIX = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

_DOWN = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_DOWNSAMPLE = re.compile(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)")
_UP = re.compile(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_UPSAMPLE = re.compile(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _resnet_inner(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET_LDM:
        raise KeyError(rest)
    return _RESNET_LDM[head] + ("." + tail if tail else "")


def unet_to_ldm(path: str, layers_per_block: int = 2, up_attn_blocks: frozenset[int] | None = None) -> str:
    """Map a diffusers UNet path (module or parameter) to its LDM path (without ``model.diffusion_model.``).

    ``up_attn_blocks``: indices of up blocks that have attentions (decides the upsampler's slot,
    ``.1`` or ``.2``); default: every block but the first (SD1/SD2 layout).
    """
    step = layers_per_block + 1
    for head, ldm in _TOP_LDM.items():
        if path == head or path.startswith(head + "."):
            return ldm + path[len(head):]
    if m := _DOWN.fullmatch(path):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        inner = _resnet_inner(rest) if kind == "resnets" else rest
        return f"input_blocks.{step * i + j + 1}.{0 if kind == 'resnets' else 1}.{inner}"
    if m := _DOWNSAMPLE.fullmatch(path):
        return f"input_blocks.{step * (int(m[1]) + 1)}.0.op{m[2]}"
    if m := _MID.fullmatch(path):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{_resnet_inner(rest)}"
    if m := _UP.fullmatch(path):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        inner = _resnet_inner(rest) if kind == "resnets" else rest
        return f"output_blocks.{step * i + j}.{0 if kind == 'resnets' else 1}.{inner}"
    if m := _UPSAMPLE.fullmatch(path):
        i = int(m[1])
        has_attn = (i in up_attn_blocks) if up_attn_blocks is not None else i > 0
        return f"output_blocks.{step * i + layers_per_block}.{2 if has_attn else 1}.conv{m[2]}"
    raise KeyError(path)


def _sdxl_up_attn() -> frozenset[int]:
    # SDXL: every up block that has an upsampler also has attentions (only the last block has none).
    return frozenset(range(8))


def unet_module_names(max_blocks: int = 4, max_transformer_layers: int = 10) -> list[str]:
    """Every LoRA-targetable module path a diffusers SD/SDXL UNet can have (a generous superset)."""
    names = list(_TOP_LDM)
    names.remove("conv_norm_out")

    def attn(prefix: str) -> list[str]:
        out = [f"{prefix}.proj_in", f"{prefix}.proj_out"]
        for k in range(max_transformer_layers):
            out += [f"{prefix}.transformer_blocks.{k}.{leaf}" for leaf in TRANSFORMER_LEAVES]
        return out

    for i in range(max_blocks):
        for j in range(2):
            names += [f"down_blocks.{i}.resnets.{j}.{leaf}" for leaf in RESNET_LEAVES]
            names += attn(f"down_blocks.{i}.attentions.{j}")
        names.append(f"down_blocks.{i}.downsamplers.0.conv")
        for j in range(3):
            names += [f"up_blocks.{i}.resnets.{j}.{leaf}" for leaf in RESNET_LEAVES]
            names += attn(f"up_blocks.{i}.attentions.{j}")
        names.append(f"up_blocks.{i}.upsamplers.0.conv")
    for j in range(2):
        names += [f"mid_block.resnets.{j}.{leaf}" for leaf in RESNET_LEAVES]
    names += attn("mid_block.attentions.0")
    return names


def clip_module_names(max_layers: int = 48) -> list[str]:
    """Every LoRA-targetable module path of a CLIP text encoder (with ``text_model.``)."""
    return [f"text_model.encoder.layers.{n}.{leaf}" for n in range(max_layers) for leaf in CLIP_LEAVES]


def normalize_te_path(path: str) -> str:
    """Insert ``text_model.`` into a CLIP path written by transformers >= 5 (flattened CLIPTextModel)."""
    if path.startswith(("encoder.layers.", "embeddings.", "final_layer_norm")):  # not T5's encoder.block
        return "text_model." + path
    return path


def is_sdxl(arch: str | None) -> bool:
    """True for the SDXL architecture."""
    return arch == "sdxl"


def kohya_name(canonical: str, arch: str) -> str:
    """The kohya module name (no ``.lora_down.weight``) of a canonical SD module name."""
    component, _, path = canonical.partition(".")
    if component == "unet":
        if is_sdxl(arch):
            try:
                path = unet_to_ldm(path, 2, _sdxl_up_attn())
            except KeyError:
                raise AdapterError(f"{canonical}: not a module of the SDXL UNet layout") from None
        return "lora_unet_" + path.replace(".", "_")
    if component in ("text_encoder", "text_encoder_2"):
        path = normalize_te_path(path)
        if is_sdxl(arch):
            prefix = SDXL_TE_PREFIX[component]
        elif component == "text_encoder":
            prefix = TE_PREFIX.get(arch, "lora_te")
        else:
            raise AdapterError(f"{canonical}: a second text encoder only exists in SDXL, not {arch}")
        return f"{prefix}_" + path.replace(".", "_")
    raise AdapterError(f"{canonical}: not a Stable Diffusion module name (unet./text_encoder./text_encoder_2.)")


@lru_cache(maxsize=8)
def _kohya_table(arch: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for path in unet_module_names():
        try:
            table[kohya_name("unet." + path, arch)] = "unet." + path
        except AdapterError:
            continue
    components = ("text_encoder", "text_encoder_2") if is_sdxl(arch) else ("text_encoder",)
    for component in components:
        for path in clip_module_names():
            canonical = f"{component}.{path}"
            table[kohya_name(canonical, arch)] = canonical
    return table


def canonical_from_kohya(name: str, arch: str) -> str | None:
    """The canonical module name of a kohya module name for ``arch``, or None if it names no module.

    Names written without ``text_model_`` (from tools on transformers >= 5) are accepted too.
    """
    table = _kohya_table(arch)
    if name in table:
        return table[name]
    for prefix in ("lora_te1_", "lora_te2_", "lora_te_"):
        if name.startswith(prefix) and not name.startswith(prefix + "text_model_"):
            return table.get(prefix + "text_model_" + name[len(prefix):])
    return None


def unet_from_diffusers_style_kohya(name: str) -> str | None:
    """For SDXL files written with diffusers-style UNet names instead of LDM ones: the canonical name, if any."""
    return _kohya_table("sd1").get(name) if name.startswith("lora_unet_") else None
