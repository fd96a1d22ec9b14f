"""The canonical in-memory LoRA adapter every format reads into and writes from.

Module names are the base model's own module paths:
- Stable Diffusion: ``unet.<diffusers path>``, ``text_encoder.<transformers path>``,
  ``text_encoder_2.<transformers path>`` (CLIP paths always include ``text_model.``).
- Flux.1: ``transformer.<diffusers FluxTransformer2DModel path>`` (q/k/v split as diffusers has
  them), ``text_encoder.<CLIP-L path>``, ``text_encoder_2.<T5 encoder path>`` (see ``flux_names``).
- LLMs: the Hugging Face path without PEFT's ``base_model.model.`` prefix
  (``model.layers.0.self_attn.q_proj``, ``lm_head``, ``model.embed_tokens``).

The scale convention is the one every consumer shares: ``delta = up @ down * alpha / rank``.
Readers fold rsLoRA and per-module patterns into ``alpha`` so writers never need to know them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import AdapterError
from .flux_names import is_flux_transformer_path

SD_ARCHES = ("sd1", "sd2", "sd2-v", "sdxl")
FLUX_ARCHES = ("flux",)
IMAGE_FAMILIES = ("sd", "flux")


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

    modules: dict[str, LoraModule | LycorisModule]
    arch: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str | None = None
    # Full replacement weights PEFT saves for ``modules_to_save`` (name -> tensor).
    full_weights: dict[str, np.ndarray] = field(default_factory=dict)
    # How the file carried alpha (shown by inspect): e.g. "alpha tensors", "config", "folded into weights".
    alpha_form: str | None = None
    # Modules the file held fused (Flux BFL naming), by the file's name: how they were split (inspect).
    fused: dict[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str | None:
        """``"sd"``, ``"flux"`` or ``"llm"`` from the architecture or the module names; None if unknown."""
        if self.arch in SD_ARCHES:
            return "sd"
        if self.arch in FLUX_ARCHES or (self.arch is None and any(
                is_flux_transformer_path(name[len("transformer."):]) for name in self.modules
                if name.startswith("transformer."))):
            return "flux"
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


@dataclass
class LycorisModule:
    """A LyCORIS LoHa or LoKr module: its factors under LyCORIS' names, alpha, and the weight shape.

    LoHa: ``delta = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r`` (Tucker: each half rebuilt from
    ``hada_t*``), r = rows of ``hada_w1_b``. LoKr: ``delta = kron(w1, w2) * alpha / r`` where each
    half is full (``lokr_w1``) or low rank (``lokr_w1_a @ lokr_w1_b``), r the rank of the low-rank
    half; with both halves full the scale is 1 (LyCORIS, ComfyUI).
    """

    algo: str  # "loha" | "lokr"
    factors: dict[str, np.ndarray]
    alpha: float
    shape: tuple[int, ...]  # the adapted weight's shape
    magnitude: np.ndarray | None = None  # DoRA (LyCORIS DoHa/DoKr), per output row
    lokr_rank: int | None = None

    bias = None
    is_embedding = False

    @property
    def rank(self) -> int:
        """The factor rank (LoKr with both halves full: 0)."""
        if self.algo == "loha":
            return int(self.factors["hada_w1_b"].shape[0])
        return int(self.lokr_rank or 0)

    @property
    def scale(self) -> float:
        """alpha / rank (LoKr with both halves full: 1)."""
        return float(self.alpha) / self.rank if self.rank else 1.0

    def _hada_half(self, i: int) -> np.ndarray:
        a, b = self.factors[f"hada_w{i}_a"], self.factors[f"hada_w{i}_b"]
        t = self.factors.get(f"hada_t{i}")
        if t is not None:  # a (r, out), b (r, in), t (r, r, kh, kw)
            return np.einsum("ij...,jr,ip->pr...", t, b, a)
        return (a @ b).reshape(self.shape)

    def lokr_half(self, i: int) -> np.ndarray:
        """LoKr's first (i=1) or second (i=2) Kronecker factor, rebuilt (flat for a conv without Tucker)."""
        full = self.factors.get(f"lokr_w{i}")
        if full is not None:
            return full
        a, b = self.factors[f"lokr_w{i}_a"], self.factors[f"lokr_w{i}_b"]
        t = self.factors.get(f"lokr_t{i}")
        if t is not None:  # a (r, out), b (r, in), t (r, r, kh, kw)
            return np.einsum("ij...,ip,jr->pr...", t, a, b)
        return a @ b

    def delta(self, multiplier: float = 1.0) -> np.ndarray:
        """The weight change in float32, shaped like the weight (DoRA modules: see ``LoraModule.delta``)."""
        if self.magnitude is not None:
            raise ValueError("a DoRA module has no weight-independent delta")
        if self.algo == "loha":
            out = self._hada_half(1) * self._hada_half(2)
        else:
            w1 = self.lokr_half(1)
            w2 = self.lokr_half(2)
            if w2.ndim == 2 and len(self.shape) == 4:
                w2 = w2.reshape((self.shape[0] // w1.shape[0], self.shape[1] // w1.shape[1]) + self.shape[2:])
            if w2.ndim == 4:
                w1 = w1.reshape(w1.shape + (1, 1))
            out = np.kron(w1, w2)
        return (out * (self.scale * multiplier)).astype(np.float32).reshape(self.shape)


def lycoris_algos(adapter: LoraAdapter) -> list[str]:
    """The LyCORIS algorithms (loha, lokr) among ``adapter``'s modules, sorted."""
    return sorted({m.algo for m in adapter.modules.values() if isinstance(m, LycorisModule)})


def require_plain_lora(adapter: LoraAdapter, path: object, target: str) -> None:
    """Stop with one line when ``adapter`` has LoHa/LoKr modules, which ``target`` cannot carry."""
    algos = lycoris_algos(adapter)
    if algos:
        raise AdapterError(f"{path}: {target} take plain LoRA only, this adapter is LyCORIS {'/'.join(algos)}; "
                           "convert --to peft, or pass --svd-rank R to approximate each module by a rank-R LoRA")
