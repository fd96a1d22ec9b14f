"""``lora-bridge upgrade-ggml IN.bin OUT.gguf``: a legacy GGML LLaMA file as a GGUF llama.cpp loads.

Tensors are renamed to GGUF names and copied as they are: quantized blocks byte for byte
(``gguf.quant_shape_to_byte_shape`` gives the writer the byte shape it expects; llama.cpp's own
converter passes element shapes there and fails on quantized files with current gguf-py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .._converters import converters
from ..cancel import cancel_point
from ..errors import UserError
from .ggml_legacy import GGMLFile, gguf_metadata, gguf_tensor_name, read_ggml

GGMLQuantizationType = converters.gguf_py.installed_gguf().GGMLQuantizationType


# What a GGUF copy of a GGML base was made from (``base_gguf.source_stamp``); its reuse check reads it back.
SOURCE_KEY = "lora_bridge.ggml_source"


def _write_metadata(writer, meta: dict) -> None:
    """The hparams and tokenizer keys with gguf-py's typed helpers (same types as its converters)."""
    writer.add_name(meta["general.name"])
    writer.add_context_length(meta["llama.context_length"])
    writer.add_embedding_length(meta["llama.embedding_length"])
    writer.add_block_count(meta["llama.block_count"])
    writer.add_feed_forward_length(meta["llama.feed_forward_length"])
    writer.add_head_count(meta["llama.attention.head_count"])
    writer.add_head_count_kv(meta["llama.attention.head_count_kv"])
    writer.add_layer_norm_rms_eps(meta["llama.attention.layer_norm_rms_epsilon"])
    writer.add_rope_freq_base(meta["llama.rope.freq_base"])
    writer.add_rope_dimension_count(meta["llama.rope.dimension_count"])
    writer.add_file_type(meta["general.file_type"])
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_scores(meta["tokenizer.ggml.scores"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(meta["tokenizer.ggml.unknown_token_id"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if meta.get(SOURCE_KEY):
        writer.add_string(SOURCE_KEY, meta[SOURCE_KEY])


def _tensor_args(tensor) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    """(array, raw type) for GGUFWriter.add_tensor: floats as arrays, quantized as uint8 byte rows."""
    quant_shape_to_byte_shape = converters.gguf_py.installed_gguf().quant_shape_to_byte_shape

    if tensor.qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(tensor.array(), dtype=np.float32), None
    if tensor.qtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(tensor.array(), dtype=np.float16), None
    byte_shape = quant_shape_to_byte_shape(tensor.shape, tensor.qtype)
    return np.ascontiguousarray(np.asarray(tensor.raw)).reshape(byte_shape), tensor.qtype


def write_gguf_from_ggml(ggml: GGMLFile, dst: Path, meta: dict, force: bool = False) -> Path:
    """Write ``ggml`` as GGUF at ``dst`` (atomically)."""
    gguf = converters.gguf_py.installed_gguf()

    unknown = [n for n in ggml.tensors if gguf_tensor_name(n) is None]
    if unknown:
        raise UserError(f"{ggml.path}: tensor {unknown[0]} is not part of a LLaMA model; only LLaMA GGML files "
                        "can be upgraded")
    with converters.atomic.atomic_file(dst, force=force) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _write_metadata(writer, meta)
        for name, tensor in ggml.tensors.items():
            cancel_point()
            array, raw_type = _tensor_args(tensor)
            writer.add_tensor(gguf_tensor_name(name), array, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return dst


def upgrade_ggml(src: str | Path, dst: str | Path, n_kv_heads: int | None = None, rms_eps: float | None = None,
                 context_length: int | None = None, rope_base: float | None = None, force: bool = False,
                 source_stamp: str | None = None) -> Path:
    """Convert legacy GGML ``src`` to GGUF ``dst`` (readable like any file the user writes); returns ``dst``.

    ``source_stamp`` is stored as ``lora_bridge.ggml_source`` so training runs can reuse the copy.
    """
    dst = Path(dst)
    converters.atomic.check_destination(dst, force)
    ggml = read_ggml(src)
    meta = gguf_metadata(ggml, n_kv_heads, rms_eps, context_length, rope_base)
    if source_stamp:
        meta[SOURCE_KEY] = source_stamp
    write_gguf_from_ggml(ggml, dst, meta, force=force)  # converters.atomic: umask permissions
    return dst


def upgrade_ggml_cli(args: argparse.Namespace) -> int:
    """``lora-bridge upgrade-ggml`` entry point; returns the exit code (UserError → 2 in the CLI)."""
    out = upgrade_ggml(args.input, args.output, n_kv_heads=args.n_kv_heads, rms_eps=args.rms_eps,
                       context_length=args.context_length, rope_base=args.rope_base, force=args.force)
    missing = [flag for flag, value in (("--rms-eps", args.rms_eps), ("--context-length", args.context_length))
               if value is None]
    print(f"wrote {out}")
    if missing:
        print(f"note: GGML files do not store {' and '.join(missing)}; llama.cpp's defaults were used (LLaMA-2 "
              "models want --rms-eps 1e-5 --context-length 4096, 70B also --n-kv-heads 8)")
    return 0
