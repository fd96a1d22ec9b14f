"""Text model families as data: one ``Family`` row per GGUF architecture the trainer runs.

A row says which shared blocks llama.cpp's graph for that architecture uses (rotary layout,
feed-forward activation, embedding scale, attention scale, sliding-window pattern, soft-caps), the
way llama.cpp's per-architecture ``load_arch_hparams``/``graph`` code and gguf-py's ``MODEL_TENSORS``
are organised. Which optional pieces a layer has (fused Q/K/V, biases, Q/K norms, post-norms) follows
from the tensors present, as llama.cpp's ``create_tensor(..., TENSOR_NOT_REQUIRED)`` does.


Tensor names come from gguf-py's tables (``MODEL_TENSORS[arch]``, ``TENSOR_NAMES``); ``MODULES``
maps each tensor kind to the Hugging Face module path the torch model uses, so LoRA layers have
canonical adapter names. A tensor the family's table lists but no block consumes stops the load.

Adding a family: a row here (and, when it needs one, a block in ``blocks.py``), a tiny fixture made by
llama.cpp's own converter (``tiny/llama_cpp_bases.py``) and its llama.cpp check in ``tests/text``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .._converters import converters
from ..errors import UserError

gguf = converters.gguf_py.installed_gguf()
T = converters.gguf_py.installed_gguf().MODEL_TENSOR


@dataclass(frozen=True)
class Yarn:
    """YaRN rope scaling (``rope.scaling.type = yarn``) as llama.cpp runs it: ``ggml_rope_ext`` with ext_factor 1."""

    orig_ctx: int  # ``rope.scaling.original_context_length`` (else the training context)
    beta_fast: float = 32.0  # llama.cpp's defaults where the family reads no key (llama-hparams.h)
    beta_slow: float = 1.0
    log_mul: float = 0.0  # ``rope.scaling.yarn_log_multiplier`` (HF's mscale_all_dim): the magnitude factor's divisor


@dataclass
class TextConfig:
    """Hyper-parameters of a model (what GGUF's ``<arch>.*`` keys say) and the family's block choices."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_eps: float = 1e-5  # the norms' epsilon (LayerNorm families: ``attention.layer_norm_epsilon``)
    norm: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm, with its bias when the file has one)
    rope_base: float = 10000.0
    context_length: int = 2048
    head_dim: int = 0
    attn_bias: bool = False  # qwen2: q/k/v have biases
    tokenizer: dict = field(default_factory=dict)  # tokenizer.ggml.* values (GGUF/GGML bases)
    rope_dims: int = 0  # rotated dimensions per head (``rope.dimension_count``); 0 = head_dim
    rope_interleaved: bool = False  # rotate adjacent pairs (llama.cpp's NORM rope on unpermuted rows: chatglm)
    rope_freq_scale: float = 1.0  # linear rope scaling: positions * this
    rope_attn_factor: float = 1.0  # cos and sin * this (LongRoPE's ``rope.scaling.attn_factor``)
    rope_base_swa: float = 0.0  # rope base of sliding-window layers (0 = rope_base)
    rope_freq_scale_swa: float = 1.0  # their linear position scale
    sliding_window: int = 0  # tokens a sliding-window layer sees (0 = none)
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window
    attn_scale: float = 0.0  # q scale before q.k (0 = 1/sqrt(head_dim))
    attn_softcap: float = 0.0  # scores = cap * tanh(scores / cap) (0 = none)
    final_softcap: float = 0.0  # logits = cap * tanh(logits / cap) (0 = none)
    embed_scale: float = 1.0  # embeddings * this (Gemma: sqrt(hidden); Granite: its embedding multiplier)
    residual_scale: float = 1.0  # each block's attention and FFN output * this before the residual add (Granite)
    logit_scale: float = 1.0  # logits / this (Granite)
    activation: str = "silu"  # the gated FFN's activation: silu (SwiGLU) or gelu (GeGLU, tanh approximation)
    pre_norms: bool = True  # norms before attention and FFN (OLMo 2 has only the post-norms)
    num_experts: int = 0  # MoE: experts per layer (``expert_count``; 0 = dense FFN)
    experts_used: int = 0  # experts each token goes through (``expert_used_count``, top-k)
    expert_weights_norm: bool = False  # the top-k weights divided by their sum (qwen3moe: always, as llama.cpp)
    expert_weights_scale: float = 0.0  # the top-k weights * this (0 or 1 = not applied, as llama.cpp)
    yarn: Yarn | None = None  # YaRN rope scaling (then ``rope_freq_scale`` is 1/factor)
    attn_temp_scale: float = 0.0  # Llama 4 attention temperature: Q * (1 + this * log(1 + floor(pos / floor)))
    attn_temp_floor: int = 0  # its position step (llama.cpp: the original YaRN context)

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_heads
        if not self.rope_dims:
            self.rope_dims = self.head_dim


@dataclass(frozen=True)
class Family:
    """One architecture: its GGUF name and the blocks llama.cpp's graph for it uses."""

    arch: str
    rope: str = "neox"  # llama.cpp rope type: "neox" (rotate halves) or "norm" (adjacent pairs)
    permuted_qk: bool = False  # "norm" rope with Q/K rows stored permuted (llama): unpermuted, run as neox
    activation: str = "silu"
    embed_scale: bool = False  # embeddings * sqrt(hidden)
    swa_pattern: int = 0  # llama.cpp's default layer pattern when the file has a window but no pattern key
    swa_default: int = 0  # window when the file names none (gemma2: 4096, always on)
    # what sliding-window layers take from the other layers' rope unless the file says: "base" (their frequency base;
    # else 10000), "scale" (their linear position scale; else 1). YaRN never applies to them.
    swa_rope_inherits: tuple[str, ...] = ()
    swa_ignored: bool = False  # llama.cpp runs the family without its window (phi3: "Phi SWA is currently disabled")
    attn_scale: Callable[[TextConfig], float] | None = None  # llama.cpp's f_attention_scale for this family
    attn_softcap: bool = False  # attention logit soft-capping (``attn_logit_softcapping``)
    pre_norms: bool = True
    multipliers: bool = False  # Granite's embedding, attention, residual and logit multipliers (``<arch>.*_scale``)
    yarn_keys: bool = False  # reads YaRN's betas and log multiplier and the attention temperature (mistral3)
    hf_model_types: tuple[str, ...] = ()  # HF folders of these model types load too (same tensor layout)
    modules: tuple[tuple[T, str], ...] = ()  # tensor kinds whose module differs from ``MODULES`` (fused FFN)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    moe_norm: bool = False  # MoE: llama.cpp's graph renormalises the top-k expert weights (``build_moe_ffn``'s norm_w)
    target_aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()  # lora_target_modules words that name several layers
    half_ffn_length: bool = False  # ``feed_forward_length`` is twice ffn_up's width (qwen: llama.cpp uses n_ff/2)
    rope_layers: int = 0  # llama.cpp applies rope only at this depth (baichuan: its 7B; 13B has ALiBi, others nothing)
    norm: str = "rms"  # "layer": LayerNorm (llama.cpp's LLM_NORM) with the file's biases, eps from layer_norm_epsilon
    refused: tuple[tuple[T, str], ...] = ()  # tensor kinds llama.cpp's graph uses that the trainer does not build: why


def _gemma_attn_scale(cfg: TextConfig) -> float:
    # llama.cpp: 27B (62 layers for gemma3, 46 for gemma2) scales by hidden/heads, the others by head_dim.
    big = cfg.num_layers == {"gemma3": 62, "gemma2": 46}.get(cfg.arch)
    return 1.0 / math.sqrt(cfg.hidden_size / cfg.num_heads if big else cfg.head_dim)


FAMILIES: dict[str, Family] = {f.arch: f for f in (
    Family("llama", rope="norm", permuted_qk=True, hf_model_types=("llama", "mistral")),
    Family("qwen2", hf_model_types=("qwen2",)),
    Family("qwen3"),
    Family("gemma3", activation="gelu", embed_scale=True, swa_pattern=6, attn_scale=_gemma_attn_scale),
    Family("gemma2", activation="gelu", embed_scale=True, swa_pattern=2, swa_default=4096,
           swa_rope_inherits=("base", "scale"),
           attn_scale=_gemma_attn_scale, attn_softcap=True),
    Family("granite", rope="norm", permuted_qk=True, multipliers=True),
    # MoE (softmax router, top-k experts, weights renormalised); LoRA on attention unless the targets name
    # ``experts`` (every expert's gate/up/down: llama.cpp applies 3-D LoRA to *_exps through mul_mat_id).
    Family("qwen3moe", moe_norm=True, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
           target_aliases=(("experts", ("gate_proj", "up_proj", "down_proj")),)),
    Family("mistral3", rope="norm", permuted_qk=True, yarn_keys=True),
    # OLMo 3 converts as olmo2 with a window: its sliding-window layers rotate at the file's base, unscaled
    Family("olmo2", pre_norms=False, swa_pattern=4, swa_rope_inherits=("base",)),
    Family("phi3", swa_ignored=True, modules=((T.FFN_UP, "mlp.gate_up_proj"),),
           lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    Family("qwen", half_ffn_length=True, lora_targets=("qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    Family("baichuan", rope="norm", permuted_qk=True, rope_layers=32),
    # ChatGLM3 (fused query_key_value) and GLM-4-hf (separate q/k/v) layouts: q/k/v biases, NORM rope on half
    # of each head (``rope.dimension_count``), llama.cpp's ffn_up holding gate then up (SWIGLU, SEQ).
    Family("chatglm", rope="norm", modules=((T.FFN_UP, "mlp.gate_up_proj"),),
           lora_targets=("qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")),
    # StarCoder 2: LayerNorms with biases, biases on q/k/v/o, a non-gated GELU FFN with biases (HF's c_fc/c_proj).
    Family("starcoder2", activation="gelu", norm="layer", modules=((T.FFN_UP, "mlp.c_fc"), (T.FFN_DOWN, "mlp.c_proj")),
           lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj")),
    # StableLM (3B 4E1T, 2 1.6B): LayerNorms with biases, partial rotary (``rope.dimension_count``), optional q/k/v
    # biases, SwiGLU. StableLM 2 12B's per-head Q/K LayerNorms (and its parallel residual) are not built.
    Family("stablelm", norm="layer", refused=tuple((kind, "StableLM 2 12B's per-head Q/K LayerNorms")
                                                   for kind in (T.ATTN_Q_NORM, T.ATTN_K_NORM))),
)}
SUPPORTED_ARCHES = tuple(FAMILIES)
HF_MODEL_TYPES = {t: f.arch for f in FAMILIES.values() for t in f.hf_model_types}

# Tensor kind -> (HF module path, parameter suffixes accepted) of the torch model. Block tensors are
# under ``model.layers.{i}.``; the others are global.
MODULES: dict[T, str] = {
    T.TOKEN_EMBD: "model.embed_tokens",
    T.OUTPUT_NORM: "model.norm",
    T.OUTPUT: "lm_head",
    T.ROPE_FREQS: "rope_freqs",  # Llama 3.1 rope scaling as per-dimension frequency divisors
    T.ROPE_FACTORS_SHORT: "rope_factors_short",  # LongRoPE (phi3) divisors within the original context
    T.ROPE_FACTORS_LONG: "rope_factors_long",  # ... and beyond it (llama.cpp picks by the context size it runs)
    T.ATTN_NORM: "input_layernorm",
    T.ATTN_Q: "self_attn.q_proj",
    T.ATTN_K: "self_attn.k_proj",
    T.ATTN_V: "self_attn.v_proj",
    T.ATTN_QKV: "self_attn.qkv_proj",
    T.ATTN_OUT: "self_attn.o_proj",
    T.ATTN_Q_NORM: "self_attn.q_norm",
    T.ATTN_K_NORM: "self_attn.k_norm",
    T.ATTN_POST_NORM: "post_attn_norm",
    T.FFN_NORM: "post_attention_layernorm",  # HF LLaMA's name for the pre-FFN norm
    T.FFN_PRE_NORM: "post_attention_layernorm",
    T.FFN_POST_NORM: "post_ffn_norm",
    T.FFN_GATE: "mlp.gate_proj",
    T.FFN_UP: "mlp.up_proj",
    T.FFN_DOWN: "mlp.down_proj",
    T.FFN_GATE_INP: "mlp.gate",  # MoE router
    T.FFN_GATE_EXP: "mlp.experts.gate_proj",  # 3-D (experts, out, in): one gated FFN per expert
    T.FFN_UP_EXP: "mlp.experts.up_proj",
    T.FFN_DOWN_EXP: "mlp.experts.down_proj",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def family_for(arch: str, where: object) -> Family:
    """The row of ``arch``, or UserError listing the supported families."""
    family = FAMILIES.get(arch)
    if family is None:
        raise UserError(f"{where}: architecture {arch or 'unknown'!r} is not supported for text LoRA training; "
                        f"supported: {', '.join(SUPPORTED_ARCHES)}")
    return family


def _gguf_arch(arch: str) -> gguf.MODEL_ARCH:
    for key, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return key
    raise UserError(f"architecture {arch!r} is unknown to the installed gguf-py; upgrade gguf (pip install -U gguf)")


def tensor_names(arch: str) -> dict[str, T]:
    """gguf-py's tensor names of ``arch`` with ``{bid}`` kept: ``"blk.{bid}.attn_q" -> ATTN_Q``."""
    out: dict[str, T] = {}
    for kind in gguf.MODEL_TENSORS[_gguf_arch(arch)]:
        out.setdefault(gguf.TENSOR_NAMES[kind], kind)
    return out


def hf_name(gguf_name: str, names: dict[str, T], where: object, family: Family | None = None) -> str:
    """``blk.0.attn_q.weight`` -> ``model.layers.0.self_attn.q_proj.weight``; UserError for a tensor no block takes."""
    stem, _, suffix = gguf_name.rpartition(".")
    match = _BLOCK.match(stem)
    key = _BLOCK.sub("blk.{bid}.", stem) if match else stem
    kind = names.get(key)
    modules = {**MODULES, **dict(family.modules if family else ())}
    refused = dict(family.refused if family else ())
    if kind in refused:
        raise UserError(f"{where}: tensor {gguf_name} ({refused[kind]}) is not supported by the trainer yet; "
                        f"this {family.arch} model cannot be trained")
    if kind is None or kind not in modules:
        what = f"{kind.name} tensor" if kind is not None else "tensor"
        raise UserError(f"{where}: {what} {gguf_name} is not supported for this architecture by the trainer "
                        "(it would be ignored and the logits would differ from llama.cpp's)")
    module = modules[kind]
    return f"model.layers.{match.group(1)}.{module}.{suffix}" if match else f"{module}.{suffix}"


def _swa_layers(family: Family, meta: dict, arch: str, n_layers: int, window: int) -> tuple[bool, ...]:
    """Which layers use the window, as llama.cpp's ``load_swa_pattern``/``set_swa_pattern`` decide."""
    if not window:
        return (False,) * n_layers
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", family.swa_pattern)
    if isinstance(pattern, list):
        return tuple(bool(p) for p in pattern[:n_layers])
    pattern = int(pattern)
    return tuple(pattern == 0 or (i % pattern < pattern - 1) for i in range(n_layers))


def config_from_gguf(path: object, meta: dict) -> TextConfig:
    """``TextConfig`` from GGUF metadata, or UserError naming the supported architectures."""
    arch = str(meta.get("general.architecture", ""))
    family = family_for(arch, path)

    def key(name: str, default: object = None) -> object:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise UserError(f"{path}: GGUF metadata lacks {arch}.{name}; the file is incomplete")
        return value

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    head_dim = int(meta.get(f"{arch}.attention.key_length", 0) or hidden // heads)
    if head_dim * heads != hidden and arch == "llama":
        head_dim = hidden // heads
    layers = int(key("block_count"))
    if family.rope_layers and layers != family.rope_layers:
        raise UserError(f"{path}: a {arch} model with {layers} layers is not supported for text LoRA training: "
                        f"llama.cpp rotates only its {family.rope_layers}-layer (7B) models (the 40-layer 13B uses "
                        "ALiBi)")
    scaling = str(meta.get(f"{arch}.rope.scaling.type", "none"))
    if scaling not in ("none", "linear", "longrope", "yarn"):
        raise UserError(f"{path}: rope scaling {scaling!r} is not supported yet for text LoRA training")
    factor = float(meta.get(f"{arch}.rope.scaling.factor", 0.0) or 0.0)
    freq_scale = 1.0 / factor if scaling in ("linear", "yarn") and factor else 1.0
    window = 0 if family.swa_ignored else int(meta.get(f"{arch}.attention.sliding_window", family.swa_default) or 0)
    swa_base = float(key("rope.freq_base", 10000.0)) if "base" in family.swa_rope_inherits else 10000.0
    cfg = TextConfig(
        arch=arch,
        vocab_size=int(meta.get(f"{arch}.vocab_size", 0) or len(tokens)),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")) // (2 if family.half_ffn_length else 1),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        rms_eps=float(key(f"attention.layer_norm{'' if family.norm == 'layer' else '_rms'}_epsilon", 1e-5)),
        norm=family.norm,
        rope_base=float(key("rope.freq_base", 10000.0)),
        context_length=int(key("context_length", 2048)),
        head_dim=head_dim,
        attn_bias=arch == "qwen2",
        tokenizer={k: v for k, v in meta.items() if k.startswith("tokenizer.")},
        rope_dims=int(meta.get(f"{arch}.rope.dimension_count", 0) or 0),
        rope_interleaved=family.rope == "norm" and not family.permuted_qk,
        rope_freq_scale=freq_scale,
        rope_attn_factor=float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0) or 1.0),
        rope_base_swa=float(meta.get(f"{arch}.rope.freq_base_swa", swa_base)) if window else 0.0,
        rope_freq_scale_swa=freq_scale if "scale" in family.swa_rope_inherits else 1.0,
        sliding_window=window,
        swa_layers=_swa_layers(family, meta, arch, layers, window),
        # llama.cpp's defaults (llama-hparams.h) where a family reads the key but the file lacks it
        attn_softcap=float(meta.get(f"{arch}.attn_logit_softcapping", 50.0)) if family.attn_softcap else 0.0,
        final_softcap=float(meta.get(f"{arch}.final_logit_softcapping", 30.0 if family.attn_softcap else 0.0) or 0.0),
        embed_scale=math.sqrt(hidden) if family.embed_scale else 1.0,
        activation=family.activation,
        pre_norms=family.pre_norms,
        num_experts=int(meta.get(f"{arch}.expert_count", 0) or 0),
        experts_used=int(meta.get(f"{arch}.expert_used_count", 0) or 0),
        expert_weights_norm=family.moe_norm,  # qwen3moe's graph neither reads expert_weights_norm nor _scale
    )
    if cfg.num_experts and not 0 < cfg.experts_used <= cfg.num_experts:
        raise UserError(f"{path}: {arch}.expert_used_count is {cfg.experts_used} for {cfg.num_experts} experts; "
                        "the file is damaged, re-convert it")
    if family.attn_scale is not None:
        cfg.attn_scale = family.attn_scale(cfg)
    orig_ctx = int(meta.get(f"{arch}.rope.scaling.original_context_length", 0) or cfg.context_length)
    if scaling == "yarn":
        cfg.yarn = _yarn(meta, arch, orig_ctx, family.yarn_keys)
    if family.yarn_keys:  # llama.cpp's mistral3: the temperature steps every original context length
        cfg.attn_temp_scale = float(meta.get(f"{arch}.attention.temperature_scale", 0.0) or 0.0)
        cfg.attn_temp_floor = orig_ctx
    if family.multipliers:  # llama.cpp's granite graph: 0 or missing means "not applied"
        cfg.embed_scale = float(meta.get(f"{arch}.embedding_scale", 0.0) or 1.0)
        cfg.attn_scale = float(meta.get(f"{arch}.attention.scale", 0.0) or 0.0)
        cfg.residual_scale = float(meta.get(f"{arch}.residual_scale", 0.0) or 1.0)
        cfg.logit_scale = float(key("logit_scale"))
    return cfg


def _yarn(meta: dict, arch: str, orig_ctx: int, read_keys: bool) -> Yarn:
    """YaRN's parameters as llama.cpp's ``load_hparams`` and the family's ``load_arch_hparams`` read them."""
    if not read_keys:
        return Yarn(orig_ctx)
    return Yarn(orig_ctx, float(meta.get(f"{arch}.rope.scaling.yarn_beta_fast", 32.0)),
                float(meta.get(f"{arch}.rope.scaling.yarn_beta_slow", 1.0)),
                float(meta.get(f"{arch}.rope.scaling.yarn_log_multiplier", 0.0)))
