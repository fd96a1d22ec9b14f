"""LyCORIS' own format: what ``lycoris.create_lycoris(model, ...)`` then ``save_weights`` writes.

Keys are ``lycoris_<module path with . as _>.<part>`` with the parts of kohya files (LoRA/LoCon,
Tucker, DoRA, LoHa, LoKr; see ``lycoris_parts``). The paths are those of the one model LyCORIS
wrapped: a diffusers UNet (``lycoris_down_blocks_0_...``) or a CLIP text encoder
(``lycoris_text_model_encoder_...``, or ``lycoris_encoder_...`` under transformers 5). Read only:
write kohya files for WebUIs, PEFT folders for diffusers/peft.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AdapterError
from ..lycoris_parts import module_from_parts
from ..model import LoraAdapter
from ..safetensors_io import SafetensorsFile, has_tensor_prefix
from ..sd_names import canonical_from_kohya
from .kohya import group_parts

NAME = "lycoris"
PREFIX = "lycoris_"


def sniff(path: Path) -> bool:
    """A ``.safetensors`` whose tensor names start with ``lycoris_``."""
    return has_tensor_prefix(path, PREFIX)


def _canonical(name: str, arch: str) -> str | None:
    rest = name[len(PREFIX):]
    if rest.startswith(("text_model_", "encoder_layers_")):
        return canonical_from_kohya("lora_te_" + rest, "sd1" if arch == "sdxl" else arch)
    # SD UNet paths as diffusers names them; the SD1 table holds the diffusers-style kohya names.
    return canonical_from_kohya("lora_unet_" + rest, "sd1")


def read(path: Path, arch: str | None = None) -> LoraAdapter:
    """Read a native LyCORIS file of an SD UNet or text encoder into canonical names."""
    from .peft import sd_arch_guess

    path = Path(path)
    st = SafetensorsFile(path)
    found = group_parts(st.keys(), st.get, path, (PREFIX,))
    modules = {}
    for name, parts in found.items():
        canonical = _canonical(name, arch or "sd1")
        if canonical is None:
            raise AdapterError(f"{path}: {name} is not a module of a Stable Diffusion UNet or CLIP text encoder")
        modules[canonical] = module_from_parts(name, parts, path, arch or "sd1")
    chosen = arch or sd_arch_guess(modules) or "sd1"
    return LoraAdapter(modules=modules, arch=chosen, metadata=dict(st.metadata), alpha_form="alpha tensors")
