"""The canonical in-memory LoRA adapter every format reads into and writes from.

Module names are the base model's own module paths:
- Stable Diffusion: ``unet.<diffusers path>``, ``text_encoder.<transformers path>``,
  ``text_encoder_2.<transformers path>`` (CLIP paths always include ``text_model.``).
- LLMs: the Hugging Face path without PEFT's ``base_model.model.`` prefix
  (``model.layers.0.self_attn.q_proj``, ``lm_head``, ``model.embed_tokens``).

The scale convention is the one every consumer shares: ``delta = up @ down * alpha / rank``.
Readers fold rsLoRA and per-module patterns into ``alpha`` so writers never need to know them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SD_ARCHES = ("sd1", "sd2", "sd2-v", "sdxl")
LLM_ARCHES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "falcon", "gpt2", "starcoder2")


@dataclass
class LoraModule:
    """One adapted layer: ``down`` is PEFT's lora_A, ``up`` is lora_B.

    Shapes: linear ``down`` (r, in), ``up`` (out, r); conv ``down`` (r, in, kh, kw), ``up``
    (out, r, 1, 1); embedding layers are stored like linear layers of the transposed weight
    (``down`` (r, vocab), ``up`` (dim, r)), which is how PEFT names them too.
    """

    down: np.ndarray
    up: np.ndarray
    alpha: float
    magnitude: np.ndarray | None = None  # DoRA: per output row of the adapted weight
    bias: np.ndarray | None = None  # PEFT lora_bias: added to the layer's output
    is_embedding: bool = False

    @property
    def rank(self) -> int:
        """The LoRA rank r (rows of ``down``)."""
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank: the factor on ``up @ down``."""
        return float(self.alpha) / self.rank

    def delta(self, multiplier: float = 1.0) -> np.ndarray:
        """The weight change ``up @ down * alpha / rank * multiplier`` in float32.

        Linear: (out, in); conv: (out, in, kh, kw); embedding: (vocab, dim) like the weight.
        DoRA modules have no plain delta: use ``dora_weight`` instead.
        """
        if self.magnitude is not None:
            raise ValueError("a DoRA module has no weight-independent delta")
        up = np.asarray(self.up, dtype=np.float32)
        down = np.asarray(self.down, dtype=np.float32)
        out = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
        out *= self.scale * multiplier
        if self.is_embedding:
            return out.T
        return out.reshape((up.shape[0],) + tuple(down.shape[1:]))


@dataclass
class LoraAdapter:
    """A whole adapter: modules by canonical name, the base architecture, and file metadata."""

    modules: dict[str, LoraModule]
    arch: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str | None = None
    # Full replacement weights PEFT saves for ``modules_to_save`` (name -> tensor).
    full_weights: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def family(self) -> str | None:
        """``"sd"`` or ``"llm"`` from the architecture or the module names; None if unknown."""
        if self.arch in SD_ARCHES:
            return "sd"
        if self.arch is not None:
            return "llm"
        if any(name.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for name in self.modules):
            return "sd"
        if self.modules:
            return "llm"
        return None

    def ranks(self) -> set[int]:
        """The distinct ranks used."""
        return {m.rank for m in self.modules.values()}

    def alphas(self) -> set[float]:
        """The distinct alphas used."""
        return {float(m.alpha) for m in self.modules.values()}
