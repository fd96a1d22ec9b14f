"""Tiny bases of the remote-code families (Qwen-1, Baichuan, ChatGLM3) in their upstream checkpoint layout.

transformers has no classes for ``QWenLMHeadModel``, ``BaichuanForCausalLM`` or ``ChatGLMModel`` (their
checkpoints ship modeling code), so the HF folder is written by hand: a ``config.json`` with the upstream
keys and ``architectures``, safetensors with the upstream tensor names (Qwen-1's fused ``attn.c_attn`` with
bias and ``mlp.w1``/``w2``/``c_proj``; Baichuan's fused ``self_attn.W_pack``; ChatGLM's
``transformer.encoder.layers.N.self_attention.query_key_value`` and fused ``mlp.dense_h_to_4h``), and a
tokenizer in the form llama.cpp's converter reads. The folder is then converted by llama.cpp's own
``convert_hf_to_gguf.py`` and quantized by llama.cpp's quantizer (``llama_cpp_bases``).

The weights come from a seeded transformers model whose equations are the upstream ones
(``REFERENCES``): Qwen2 is Qwen-1's graph (q/k/v biases, SwiGLU, full rotate-half rope), LLaMA is
Baichuan-7B's, and GLM (the transformers port of GLM-4) is ChatGLM3's (q/k/v biases, interleaved
rope on half of each head, fused gate/up). That model is the independent reference of the tests.

Tokenizers: Baichuan reads ``tokenizer.model`` directly. ChatGLM3 and Qwen-1 tokenizers are remote
code; ``tokenization_chatglm.py`` and ``tokenization_qwen.py`` here are minimal files written for these
fixtures (not the upstream ones) that give the converter what it reads: the SentencePiece model and
ids of ChatGLM3's specials, Qwen-1's ``mergeable_ranks`` (a ``qwen.tiktoken`` file) and specials.
Qwen-1's converter also hashes the encoding of a test string to name the pre-tokenizer; no tiny
vocabulary can give a real vocabulary's hash, so Qwen-1 is converted through a wrapper that answers
``qwen2`` (the regex of Qwen-1's tokenizer, and what the check names for the real Qwen vocabulary).
Baichuan goes through the same wrapper for a bug of this llama.cpp's converter (see ``_PATCH``).
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections import Counter
from pathlib import Path

from .llama import tiny_vocab
from .llama_cpp_bases import _SIZE, quantize_gguf, run_llama_cpp_script, sentencepiece_model, vary_vectors

REMOTE_FAMILIES = ("qwen", "baichuan", "chatglm")
# family -> (transformers config class, model class, config overrides) of the reference model.
REFERENCES: dict[str, tuple[str, str, dict]] = {
    # Qwen-1 has no grouped-query attention.
    "qwen": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 4, "rms_norm_eps": 1e-6}),
    # llama.cpp rotates Baichuan only when it has 32 layers (its 7B); 40 layers is the 13B's ALiBi.
    "baichuan": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 4, "num_hidden_layers": 32,
                                                     "intermediate_size": 256, "rms_norm_eps": 1e-6}),
    "chatglm": ("GlmConfig", "GlmForCausalLM", {"partial_rotary_factor": 0.5, "attention_bias": True,
                                                "rms_norm_eps": 1e-5}),
}
CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                    "<|observation|>")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN_WORDS = ("the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "and", "is", "in", "it", "of", "lora")
_PADDED = 384  # vocabulary rows of Qwen-1 and ChatGLM3 (their checkpoints pad the embedding too)


def qwen_ranks() -> dict[bytes, int]:
    """A tiny byte-level BPE vocabulary in tiktoken's form: the 256 bytes, then merges learnt on a few words."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [tuple(bytes([c]) for c in w.encode()) for word in _QWEN_WORDS for w in (word, " " + word)]
    while True:
        pairs = Counter(p for w in words for p in zip(w, w[1:], strict=False))
        if not pairs:
            return ranks
        best = min(pairs, key=lambda p: (-pairs[p], p))
        ranks[best[0] + best[1]] = len(ranks)
        merged = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged.append(tuple(out))
        words = merged


def vocab_size(family: str) -> int:
    """Rows of the embedding of the tiny ``family`` base."""
    if family == "baichuan":
        return len(tiny_vocab())
    return _PADDED


def build_reference(family: str, seed: int = 0):
    """The seeded transformers model (float32, eval) whose weights the tiny ``family`` folder holds."""
    import torch
    import transformers

    config_cls, model_cls, overrides = REFERENCES[family]
    config = getattr(transformers, config_cls)(vocab_size=vocab_size(family), **{**_SIZE, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float().eval()
    vary_vectors(model, seed)
    return model


def _qkv(layer, part: str):
    """Q, K and V rows (``part``: weight or bias) stacked, as the upstream fused tensors hold them."""
    import torch

    return torch.cat([getattr(getattr(layer.self_attn, f"{p}_proj"), part) for p in "qkv"])


def upstream_tensors(family: str, model) -> dict:
    """The reference model's weights under the upstream checkpoint's tensor names."""
    m = model.model
    out = {}
    for i, layer in enumerate(m.layers):
        mlp = layer.mlp
        if family == "qwen":
            p = f"transformer.h.{i}."
            out |= {p + "ln_1.weight": layer.input_layernorm.weight, p + "attn.c_attn.weight": _qkv(layer, "weight"),
                    p + "attn.c_attn.bias": _qkv(layer, "bias"),
                    p + "attn.c_proj.weight": layer.self_attn.o_proj.weight,
                    p + "ln_2.weight": layer.post_attention_layernorm.weight, p + "mlp.w1.weight": mlp.up_proj.weight,
                    p + "mlp.w2.weight": mlp.gate_proj.weight, p + "mlp.c_proj.weight": mlp.down_proj.weight}
        elif family == "baichuan":
            p = f"model.layers.{i}."
            out |= {p + "input_layernorm.weight": layer.input_layernorm.weight,
                    p + "self_attn.W_pack.weight": _qkv(layer, "weight"),
                    p + "self_attn.o_proj.weight": layer.self_attn.o_proj.weight,
                    p + "post_attention_layernorm.weight": layer.post_attention_layernorm.weight,
                    **{p + f"mlp.{n}.weight": getattr(mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj")}}
        else:
            p = f"transformer.encoder.layers.{i}."
            out |= {p + "input_layernorm.weight": layer.input_layernorm.weight,
                    p + "self_attention.query_key_value.weight": _qkv(layer, "weight"),
                    p + "self_attention.query_key_value.bias": _qkv(layer, "bias"),
                    p + "self_attention.dense.weight": layer.self_attn.o_proj.weight,
                    p + "post_attention_layernorm.weight": layer.post_attention_layernorm.weight,
                    p + "mlp.dense_h_to_4h.weight": mlp.gate_up_proj.weight,
                    p + "mlp.dense_4h_to_h.weight": mlp.down_proj.weight}
    names = {"qwen": ("transformer.wte", "transformer.ln_f", "lm_head"),
             "baichuan": ("model.embed_tokens", "model.norm", "lm_head"),
             "chatglm": ("transformer.embedding.word_embeddings", "transformer.encoder.final_layernorm",
                         "transformer.output_layer")}[family]
    for name, module in zip(names, (m.embed_tokens, m.norm, model.lm_head), strict=True):
        out[name + ".weight"] = module.weight
    if family == "chatglm":  # ChatGLM checkpoints carry the rotary table's buffer (the converter drops it)
        out["transformer.rotary_pos_emb.inv_freq"] = m.rotary_emb.inv_freq
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def _config(family: str, model) -> dict:
    c = model.config
    common = {"hidden_size": c.hidden_size, "num_attention_heads": c.num_attention_heads, "torch_dtype": "float32",
              "tie_word_embeddings": False}
    if family == "qwen":
        return {**common, "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
                "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                             "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
                "intermediate_size": 2 * c.intermediate_size,  # Qwen-1 states twice the width of w1/w2
                "num_hidden_layers": c.num_hidden_layers, "kv_channels": c.head_dim,
                "layer_norm_epsilon": c.rms_norm_eps,
                # Qwen-1's config states only layer_norm_epsilon, which this converter writes as a LayerNorm eps;
                # llama.cpp's qwen loader wants the RMS one (else "key not found ... layer_norm_rms_epsilon").
                "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_position_embeddings,
                "seq_length": c.max_position_embeddings, "rotary_emb_base": 10000, "rotary_pct": 1.0, "no_bias": True,
                "scale_attn_weights": True, "use_dynamic_ntk": True, "use_logn_attn": True,
                "vocab_size": c.vocab_size, "tokenizer_class": "QWenTokenizer"}
    if family == "baichuan":
        return {**common, "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
                "auto_map": {"AutoConfig": "configuration_baichuan.BaiChuanConfig",
                             "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"},
                "hidden_act": "silu", "intermediate_size": c.intermediate_size,
                "max_position_embeddings": c.max_position_embeddings, "num_hidden_layers": c.num_hidden_layers,
                "rms_norm_eps": c.rms_norm_eps, "vocab_size": c.vocab_size, "bos_token_id": 1, "eos_token_id": 2,
                "pad_token_id": 0}
    return {**common, "_name_or_path": "THUDM/chatglm3-6b", "architectures": ["ChatGLMModel"], "model_type": "chatglm",
            "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                         "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
            "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
            "apply_residual_connection_post_layernorm": False, "attention_softmax_in_fp32": True,
            "ffn_hidden_size": c.intermediate_size, "kv_channels": c.head_dim, "layernorm_epsilon": c.rms_norm_eps,
            "multi_query_attention": True, "multi_query_group_num": c.num_key_value_heads,
            "num_layers": c.num_hidden_layers, "original_rope": True, "padded_vocab_size": c.vocab_size,
            "post_layer_norm": True, "rmsnorm": True, "seq_length": c.max_position_embeddings, "eos_token_id": 2,
            "pad_token_id": 0}


# The class methods both remote-code tokenizers below need for AutoTokenizer.from_pretrained (offline).
_TOKENIZER_CLASS_METHODS = '''\
    @classmethod
    def from_pretrained(cls, folder, *args, **kwargs):
        return cls(str(folder))

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoTokenizer"):
        """AutoTokenizer calls this on remote-code classes; there is nothing to register offline."""
'''

_CHATGLM_TOKENIZER = ('''"""A minimal ChatGLM3 tokenizer for a tiny test fixture (written for LoRA Bridge,
not the upstream file): the SentencePiece model, then the specials after its pieces
as ChatGLM3's tokenizer numbers them."""
import os

from sentencepiece import SentencePieceProcessor

SPECIALS = %s


class _SP:
    def __init__(self, path):
        self.sp_model = SentencePieceProcessor(model_file=path)


class ChatGLMTokenizer:
    def __init__(self, folder):
        self.tokenizer = _SP(os.path.join(folder, "tokenizer.model"))
        n = self.tokenizer.sp_model.vocab_size()
        self.specials = {t: n + i for i, t in enumerate(SPECIALS)}

'''
    + _TOKENIZER_CLASS_METHODS + '''
    def get_vocab(self):
        sp = self.tokenizer.sp_model
        return {**{sp.id_to_piece(i): i for i in range(sp.vocab_size())}, **self.specials}

    def _convert_id_to_token(self, index):
        sp = self.tokenizer.sp_model
        if index < sp.vocab_size():
            return sp.id_to_piece(index)
        return {i: t for t, i in self.specials.items()}.get(index, "")
''')

_QWEN_TOKENIZER = ('''"""A minimal Qwen-1 tokenizer for a tiny test fixture (written for LoRA Bridge,
not the upstream file): byte-level BPE ranks from qwen.tiktoken (base64 token, rank) and the specials after them."""
import base64
import os

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class QWenTokenizer:
    def __init__(self, folder):
        with open(os.path.join(folder, "qwen.tiktoken"), "rb") as fh:
            lines = [line.split() for line in fh.read().splitlines() if line]
        self.mergeable_ranks = {base64.b64decode(token): int(rank) for token, rank in lines}
        start = len(self.mergeable_ranks)
        self.special_tokens = {t: start + i for i, t in enumerate(SPECIALS)}

'''
    + _TOKENIZER_CLASS_METHODS + '''
    def get_vocab(self):
        return {**{t.decode("latin-1"): r for t, r in self.mergeable_ranks.items()}, **self.special_tokens}
''')


def _write_tokenizer(family: str, folder: Path) -> None:
    vocab = tiny_vocab()
    if family == "qwen":
        ranks = qwen_ranks()
        lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
        (folder / "qwen.tiktoken").write_text("\n".join(lines) + "\n")
        (folder / "tokenization_qwen.py").write_text(_QWEN_TOKENIZER)
        config = {"auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
                  "tokenizer_class": "QWenTokenizer"}
    else:
        (folder / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
        if family == "chatglm":
            (folder / "tokenization_chatglm.py").write_text(_CHATGLM_TOKENIZER % (CHATGLM_SPECIALS,))
            config = {"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
                      "tokenizer_class": "ChatGLMTokenizer"}
        else:
            config = {"tokenizer_class": "BaichuanTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                      "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def save_upstream_folder(family: str, model, folder: Path) -> Path:
    """The HF folder in ``family``'s upstream layout: config.json, model.safetensors, tokenizer files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_config(family, model), indent=1))
    save_file(upstream_tensors(family, model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(family, folder)
    return folder


# The converter patches (``llama_cpp_bases._PATCHED_RUN``) each family needs: Qwen-1's pre-tokenizer (see the
# module docstring), Baichuan's modify_tensors recursion.
_PATCH = {"qwen": ("qwen2-pre",), "baichuan": ("baichuan",)}


def run_converter(llama_cpp_src: Path, script: str, family: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run llama.cpp's ``script`` (convert_hf_to_gguf.py, convert_lora_to_gguf.py) for a ``family`` base."""
    return run_llama_cpp_script(llama_cpp_src, script, args, _PATCH.get(family, ()))


def convert_upstream(llama_cpp_src: Path, family: str, hf_folder: Path, out: Path, outtype: str) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` on ``hf_folder`` (through the family's patches)."""
    done = run_converter(llama_cpp_src, "convert_hf_to_gguf.py", family,
                         [str(hf_folder), "--outfile", str(out), "--outtype", outtype])
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_folder}: {done.stderr[-3000:]}")
    return out


def remote_family_files(family: str, folder: Path, llama_cpp_src: Path,
                        qtypes: tuple[str, ...] = ("F32", "F16", "Q8_0", "Q4_K_M"), seed: int = 0) -> dict[str, Path]:
    """{"hf": upstream folder, "F32": gguf, "F16": gguf, ...} of one tiny remote-code ``family`` base."""
    folder = Path(folder)
    hf = save_upstream_folder(family, build_reference(family, seed), folder / f"{family}-hf")
    files: dict[str, Path] = {"hf": hf}
    for qtype in qtypes:
        out = folder / f"{family}-{qtype.lower()}.gguf"
        if qtype in ("F32", "F16", "BF16", "Q8_0"):
            files[qtype] = convert_upstream(llama_cpp_src, family, files["hf"], out, qtype.lower())
        else:
            f16 = files.get("F16") or convert_upstream(llama_cpp_src, family, files["hf"],
                                                       folder / f"{family}-f16.gguf", "f16")
            files[qtype] = quantize_gguf(f16, out, qtype)
    return files
