"""Tiny bases of every supported text family, made the way a llama.cpp user makes them.

A seeded random Hugging Face model of the family (current transformers) is saved with a
SentencePiece ``tokenizer.model`` over the tiny vocabulary, converted by llama.cpp's own
``convert_hf_to_gguf.py`` (F16, Q8_0) and quantized by llama.cpp's own quantizer
(``llama_cpp.llama_model_quantize``, e.g. Q4_K_M). Widths are multiples of 256 so the K-quant
applies to every matrix. Nothing here is our GGUF writer: the files are what llama.cpp makes.

``llama_cpp_src`` is llama.cpp's source folder (``vendor/llama.cpp`` of the llama-cpp-python sdist).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .._converters import converters
from .llama import TinyVocab, tiny_vocab

_SIZE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 512, "initializer_range": 0.05,
         "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

# family -> (transformers config class, model class, config overrides)
TINY_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"rms_norm_eps": 1e-6}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 64, "sliding_window": 4, "num_hidden_layers": 6,
        "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "final_logit_softcapping": None,
        "attn_logit_softcapping": None, "tie_word_embeddings": True}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
        "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 64, "sliding_window": 4,
        "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True, "attn_implementation": "eager"}),
    # LongRoPE: 4x the original context, short/long per-dimension factors (Phi-3.5 / Phi-4-mini style).
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {
        "rms_norm_eps": 1e-5, "max_position_embeddings": 1024,
        "original_max_position_embeddings": 256, "sliding_window": None, "rope_scaling": {
            "type": "longrope", "short_factor": [1.0 + 0.05 * i for i in range(32)],
            "long_factor": [1.0 + 0.5 * i for i in range(32)]}}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {
        "rms_norm_eps": 1e-5, "embedding_multiplier": 12.0, "attention_multiplier": 0.02,
        "residual_multiplier": 0.22, "logits_scaling": 8.0}),
    # MoE: 4 experts, top-2, top-k weights renormalised (llama.cpp's qwen3moe graph always does); widths of 256.
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {
        "rms_norm_eps": 1e-6, "moe_intermediate_size": 256, "num_experts": 4, "num_experts_per_tok": 2,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []}),
    # Llama 3.1 rope scaling: llama.cpp's converter writes it as rope_freqs.weight.
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}}),
    # Ministral 3 (llama.cpp: mistral3): YaRN and Llama-4 attention temperature. A tiny original context (8) and
    # small betas put the YaRN ramp inside the rotated dimensions and the 12+ token samples past the temperature's
    # first step; mscale_all_dim != mscale makes the YaRN magnitude factor differ from 1.
    "mistral3": ("Ministral3Config", "Ministral3ForCausalLM", {
        "rms_norm_eps": 1e-5, "max_position_embeddings": 32, "sliding_window": None, "rope_parameters": {
            "rope_type": "yarn", "type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
            "original_max_position_embeddings": 8, "beta_fast": 1.0, "beta_slow": 0.05, "mscale": 1.0,
            "mscale_all_dim": 0.5, "llama_4_scaling_beta": 0.1, "max_position_embeddings": 32}}),
    # OLMo 2: post-norms only, Q/K norms over the whole projection; a byte-level BPE vocabulary (GPT-2's, below).
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {
        "rms_norm_eps": 1e-6, "vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256,
        "pad_token_id": 50256}),
    # OLMo 3 (converted as olmo2): a sliding-window layer (window shorter than the test samples), then a full one.
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", {
        "rms_norm_eps": 1e-6, "vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256,
        "pad_token_id": 50256, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
}
# StarCoder 2: LayerNorms, biases everywhere, non-gated GELU FFN; llama.cpp's StarCoder vocabulary (below).
TINY_FAMILIES["starcoder2"] = ("Starcoder2Config", "Starcoder2ForCausalLM", {
    "norm_epsilon": 1e-5, "use_bias": True, "sliding_window": None, "hidden_act": "gelu_pytorch_tanh",
    "vocab_size": 49152, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
# StableLM 2 1.6B layout: LayerNorms with biases, q/k/v biases, a quarter of each head rotated; GPT-2's vocabulary.
TINY_FAMILIES["stablelm"] = ("StableLmConfig", "StableLmForCausalLM", {
    "layer_norm_eps": 1e-5, "use_qkv_bias": True, "qk_layernorm": False, "use_parallel_residual": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    "vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256})
# Added (user-defined) tokens after the SentencePiece pieces, as the real vocabularies have them: llama.cpp's
# vocabulary loader looks Phi-3's up by name (llama-vocab.cpp, per-model token attributes).
ADDED_TOKENS = {"phi3": ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>")}
# Families whose fixture has a byte-level BPE tokenizer: the vocabulary llama.cpp's sources ship
# (``models/ggml-vocab-<name>.gguf``), so llama.cpp's converter recognises its pre-tokenizer by hash.
BPE_VOCABS = {"olmo2": "gpt-2", "olmo3": "gpt-2", "stablelm": "gpt-2", "starcoder2": "starcoder"}
# ggml file types llama.cpp's quantizer makes from the F16 file (llama.h: LLAMA_FTYPE_*).
_QUANTIZE_FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q4_0": 2}


def sentencepiece_model(vocab: TinyVocab) -> bytes:
    """A serialized SentencePiece (unigram, byte fallback) model holding exactly ``vocab``."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for token, score, kind in zip(vocab.tokens, vocab.scores, vocab.types, strict=True):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.UNIGRAM
    spec.vocab_size = len(vocab)
    spec.byte_fallback = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = vocab.unk_id, vocab.bos_id, vocab.eos_id, -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def build_tiny_family(family: str, seed: int = 0, vocab: TinyVocab | None = None):
    """A seeded tiny HF model of ``family`` (float32, eval), norms and biases varied around their init."""
    import torch
    import transformers

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; use one of {sorted(TINY_FAMILIES)}")
    config_cls, model_cls, overrides = TINY_FAMILIES[family]
    vocab = vocab or tiny_vocab()
    n_vocab = len(vocab) + len(ADDED_TOKENS.get(family, ()))
    config = getattr(transformers, config_cls)(**{"vocab_size": n_vocab, **_SIZE, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float().eval()
    vary_vectors(model, seed)
    return model


def vary_vectors(model, seed: int) -> None:
    """Norms start at 1 (Gemma: 0) and biases at 0: vary them (seeded) so dropping one shows."""
    import torch

    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


def save_family_hf(model, folder: Path, vocab: TinyVocab | None = None, added: tuple[str, ...] = (),
                   with_tokenizer: bool = True) -> Path:
    """The HF folder llama.cpp's converter reads: config, safetensors, ``tokenizer.model`` (+ ``added``
    tokens in ``added_tokens.json``), tokenizer config (``with_tokenizer=False``: the caller writes another)."""
    vocab = vocab or tiny_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if not with_tokenizer:
        return folder
    (folder / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
    if added:
        (folder / "added_tokens.json").write_text(json.dumps({t: len(vocab) + i for i, t in enumerate(added)}))
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": vocab.tokens[vocab.bos_id],
              "eos_token": vocab.tokens[vocab.eos_id], "unk_token": vocab.tokens[vocab.unk_id], "add_bos_token": True,
              "add_eos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


# Families whose converter class reads a GPT-2 BPE vocabulary only, which it accepts only when the tokenizer's
# pre-tokenizer hash is one it knows (a real 151k Qwen2 vocabulary, far from tiny): for these, the converter's
# vocabulary step is pointed at its own SentencePiece reader (the tiny vocabulary is SentencePiece); the weights and
# hyper-parameters still go through the converter untouched. family -> (conversion module, converter class).
SPM_VOCAB_CLASSES = {"qwen3moe": ("conversion.qwen", "Qwen3MoeModel")}

# Runs one of llama.cpp's scripts (argv[2] in its source folder argv[1]) after the patches named in argv[3]
# (comma-separated) to that llama.cpp's conversion package, the one wrapper of every tiny base's conversion:
# - "spm-vocab=<module>.<Class>": the class's vocabulary step is TextModel's SentencePiece reader (SPM_VOCAB_CLASSES);
# - "qwen2-pre": the pre-tokenizer check answers qwen2 (Qwen-1, see ``remote_code_bases``' docstring);
# - "baichuan": BaichuanModel.modify_tensors' non-W_pack tensors go to TextModel's (as shipped it calls itself and
#   recurses without end on every tensor but W_pack, so no Baichuan checkpoint converts).
_PATCHED_RUN = r"""
import importlib, os, runpy, sys
src, script, patches = sys.argv[1:4]
sys.path[:0] = [src, os.path.join(src, "gguf-py")]
import conversion.base as base
for patch in patches.split(","):
    name, _, arg = patch.partition("=")
    if name == "spm-vocab":
        module, cls = arg.rsplit(".", 1)
        setattr(getattr(importlib.import_module(module), cls), "set_vocab", base.TextModel._set_vocab_sentencepiece)
    elif name == "qwen2-pre":
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    elif name == "baichuan":
        import conversion.baichuan as baichuan
        shipped = baichuan.BaichuanModel.modify_tensors
        def modify_tensors(self, data_torch, name, bid, shipped=shipped):
            if bid is not None and name == f"model.layers.{bid}.self_attn.W_pack.weight":
                yield from shipped(self, data_torch, name, bid)
            else:
                yield from base.TextModel.modify_tensors(self, data_torch, name, bid)
        baichuan.BaichuanModel.modify_tensors = modify_tensors
    else:
        raise SystemExit(f"unknown converter patch {patch!r}")
sys.argv = [os.path.join(src, script), *sys.argv[4:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_llama_cpp_script(llama_cpp_src: Path, script: str, args: list[str],
                         patches: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run llama.cpp's ``script`` (convert_hf_to_gguf.py, convert_lora_to_gguf.py) with its own gguf-py, offline,
    through ``_PATCHED_RUN`` when ``patches`` name any."""
    env = {**os.environ, "PYTHONPATH": str(llama_cpp_src / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    if patches:
        cmd = [sys.executable, "-c", _PATCHED_RUN, str(llama_cpp_src), script, ",".join(patches), *args]
    else:
        cmd = [sys.executable, str(llama_cpp_src / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def save_bpe_tokenizer(folder: Path, llama_cpp_src: Path, name: str) -> Path:
    """``tokenizer.json`` + ``tokenizer_config.json`` of a byte-level BPE built from llama.cpp's shipped
    ``models/ggml-vocab-<name>.gguf`` (its tokens and merges; GPT-2's regex pre-tokenizer, StarCoder's splits
    digits first)."""
    gguf = converters.gguf_py.installed_gguf()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from ..text.gguf_model import field_value

    reader = gguf.GGUFReader(str(Path(llama_cpp_src) / "models" / f"ggml-vocab-{name}.gguf"))
    meta = {key: field_value(f) for key, f in reader.fields.items() if key.startswith("tokenizer.")}
    tokens, merges = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"]
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges])
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if name == "starcoder":  # StarCoder's tokenizer.json: every digit on its own, then GPT-2's byte-level split
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           tokenizer.pre_tokenizer])
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = (tokens[int(meta[f"tokenizer.ggml.{which}_token_id"])] for which in ("bos", "eos"))
    tokenizer.add_special_tokens(sorted({bos, eos}))
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "add_bos_token": False,
              "add_eos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def convert_hf_to_gguf(llama_cpp_src: Path, hf_folder: Path, out: Path, outtype: str, family: str = "") -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` (its own gguf-py) on ``hf_folder``; ``outtype`` f16, q8_0..."""
    spm = SPM_VOCAB_CLASSES.get(family)
    done = run_llama_cpp_script(llama_cpp_src, "convert_hf_to_gguf.py",
                                [str(hf_folder), "--outfile", str(out), "--outtype", outtype],
                                (f"spm-vocab={spm[0]}.{spm[1]}",) if spm else ())
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_folder}: {done.stderr[-3000:]}")
    return out


_QUANTIZE = r"""
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = 2
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(rc)
"""


def quantize_gguf(src: Path, out: Path, qtype: str) -> Path:
    """llama.cpp's quantizer (through llama-cpp-python, in a subprocess) from ``src`` to ``qtype``."""
    done = subprocess.run([sys.executable, "-c", _QUANTIZE, str(src), str(out), str(_QUANTIZE_FTYPES[qtype])],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"llama_model_quantize failed ({done.returncode}) on {src}: {done.stderr[-3000:]}")
    return out


def family_files(family: str, folder: Path, llama_cpp_src: Path, qtypes: tuple[str, ...] = ("F16", "Q8_0", "Q4_K_M"),
                 seed: int = 0) -> dict[str, Path]:
    """{"hf": folder, "F16": gguf, "Q8_0": gguf, "Q4_K_M": gguf, ...} of one tiny ``family`` base."""
    folder = Path(folder)
    vocab = tiny_vocab()
    model = build_tiny_family(family, seed=seed, vocab=vocab)
    hf = save_family_hf(model, folder / f"{family}-hf", vocab, ADDED_TOKENS.get(family, ()), family not in BPE_VOCABS)
    if family in BPE_VOCABS:
        save_bpe_tokenizer(hf, llama_cpp_src, BPE_VOCABS[family])
    files: dict[str, Path] = {"hf": hf}
    for qtype in qtypes:
        out = folder / f"{family}-{qtype.lower()}.gguf"
        if qtype in ("F32", "F16", "BF16", "Q8_0"):
            files[qtype] = convert_hf_to_gguf(llama_cpp_src, files["hf"], out, qtype.lower(), family)
        else:
            f16 = files.get("F16") or convert_hf_to_gguf(llama_cpp_src, files["hf"], folder / f"{family}-f16.gguf",
                                                         "f16", family)
            files[qtype] = quantize_gguf(f16, out, qtype)
    return files
