"""Legacy GGML files older than ggjt v3 (unversioned ggml, ggmf v1, ggjt v1/v2): read, loaded, upgraded, refused.

Layouts follow llama.cpp's pre-GGUF loader: ggml has no version and no vocab scores, ggmf v1 adds
both, ggjt pads tensor data to 32 bytes. References: the ggjt v3 / GGUF files of the ``tiny``
fixture built from the same weights, the HF model, and llama.cpp's own GGML->GGUF script.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from textutil import GGML_CONVERTER, needs_ggml_converter

from extension.cli import main
from extension.errors import UserError
from extension.text.ggml_legacy import read_ggml
from extension.text.gguf_model import load_text_model
from extension.tiny.ggml import write_ggml

VARIANTS = [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2)]
VARIANT_IDS = [f"{kind}{version}" for kind, version in VARIANTS]
OPTIONS = {"n_kv_heads": 2, "rms_eps": 1e-5}
OPTS = ["--n-kv-heads", "2", "--rms-eps", "1e-5", "--context-length", "128"]
IDS = torch.tensor([[1, 5, 100, 270, 280, 3, 9, 300, 2]])


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """{(kind, version, qtype): legacy file} for F32 and F16, plus {"gguf-F16": the F16 GGUF of the same weights}."""
    from extension.tiny.llama import write_tiny_gguf

    root = tmp_path_factory.mktemp("ggml-versions")
    out = {"gguf-F16": write_tiny_gguf(tiny["model"], root / "tiny-f16.gguf", qtype="F16", vocab=tiny["vocab"])}
    for kind, version in VARIANTS:
        for qtype in ("F32", "F16"):
            path = root / f"tiny.{kind}{version}.{qtype.lower()}.bin"
            out[kind, version, qtype] = write_ggml(tiny["model"], tiny["vocab"], path, qtype, kind, version)
    return out


@pytest.fixture(scope="module")
def reference_logits(tiny, files):
    with torch.no_grad():
        return {"hf": tiny["model"](IDS).logits,
                "F32": load_text_model(tiny["ggml-F32"], OPTIONS).eval()(IDS),
                "F16": load_text_model(files["gguf-F16"]).eval()(IDS)}


def _tensors(path):
    return {t.name: (int(t.tensor_type), [int(d) for d in t.shape], np.asarray(t.data).view(np.uint8).tobytes())
            for t in GGUFReader(str(path)).tensors}


def _strings(field):
    return [bytes(field.parts[i]).decode() for i in field.data]


def _numbers(field):
    return [field.parts[i][0].item() for i in field.data]


@pytest.mark.parametrize(("kind", "version"), VARIANTS, ids=VARIANT_IDS)
def test_reader_layout(tiny, files, kind, version):
    """Scores only from ggmf on; data 32-byte aligned in the file only in ggjt (the writer makes unaligned ones)."""
    ggml = read_ggml(files[kind, version, "F32"])
    v3 = read_ggml(tiny["ggml-F32"])
    assert (ggml.kind, ggml.version, ggml.hparams) == (kind, version, v3.hparams)
    assert [text for text, _ in ggml.vocab] == [text for text, _ in v3.vocab]
    scores = [score for _, score in ggml.vocab]
    assert scores == ([0.0] * len(scores) if kind == "ggml" else [score for _, score in v3.vocab])
    offsets = [t.offset for t in ggml.tensors.values()]
    assert all(o % 32 == 0 for o in offsets) == (kind == "ggjt")
    assert ggml.tensors.keys() == v3.tensors.keys()
    for name, tensor in v3.tensors.items():
        assert np.array_equal(ggml.tensors[name].array(), tensor.array()), name


@pytest.mark.parametrize("qtype", ["F32", "F16"])
@pytest.mark.parametrize(("kind", "version"), VARIANTS, ids=VARIANT_IDS)
def test_variant_logits_match(files, reference_logits, kind, version, qtype):
    with torch.no_grad():
        out = load_text_model(files[kind, version, qtype], OPTIONS).eval()(IDS)
    assert torch.equal(out, reference_logits[qtype])  # ggjt v3 F32 / GGUF F16 from the same weights
    if qtype == "F32":
        assert (out - reference_logits["hf"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("qtype", ["F32", "F16"])
@pytest.mark.parametrize(("kind", "version"), VARIANTS, ids=VARIANT_IDS)
def test_upgrade_matches_gguf(tiny, files, tmp_path, kind, version, qtype):
    out = tmp_path / "up.gguf"
    assert main(["upgrade-ggml", str(files[kind, version, qtype]), str(out), *OPTS]) == 0
    ours, ref = _tensors(out), _tensors(tiny["F32"] if qtype == "F32" else files["gguf-F16"])
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name] == ref[name], name
    fields, ref_fields = GGUFReader(str(out)).fields, GGUFReader(str(tiny["F32"])).fields
    assert _strings(fields["tokenizer.ggml.tokens"]) == _strings(ref_fields["tokenizer.ggml.tokens"])
    assert _numbers(fields["tokenizer.ggml.token_type"]) == _numbers(ref_fields["tokenizer.ggml.token_type"])
    scores = _numbers(fields["tokenizer.ggml.scores"])
    assert scores == ([0.0] * len(scores) if kind == "ggml" else _numbers(ref_fields["tokenizer.ggml.scores"]))


@needs_ggml_converter
@pytest.mark.parametrize(("kind", "version"), VARIANTS, ids=VARIANT_IDS)
def test_llama_cpp_converter_agrees(files, tmp_path, kind, version):
    """llama.cpp's GGML->GGUF script, run with the installed gguf-py, reads the F16 file to our bytes and vocab.

    Its recorded shapes are wrong with gguf-py 0.19 (element shapes passed where byte shapes are
    expected: row length / 2 for F16), so shapes are not compared.
    """
    src, theirs_path, ours_path = files[kind, version, "F16"], tmp_path / "cpp.gguf", tmp_path / "ours.gguf"
    subprocess.run([sys.executable, str(GGML_CONVERTER), "--input", str(src), "--output", str(theirs_path),
                    "--gqa", "2", "--eps", "1e-5", "-c", "128"], check=True, capture_output=True,
                   env={**os.environ, "NO_LOCAL_GGUF": "1"})
    assert main(["upgrade-ggml", str(src), str(ours_path), *OPTS]) == 0
    theirs = GGUFReader(str(theirs_path))
    ours = _tensors(ours_path)
    raw = theirs_path.read_bytes()
    assert {t.name for t in theirs.tensors} == ours.keys()
    for t in theirs.tensors:
        ttype, _shape, data = ours[t.name]
        assert (int(t.tensor_type), raw[t.data_offset:t.data_offset + len(data)]) == (ttype, data), t.name
    mine = GGUFReader(str(ours_path)).fields
    for key in ("tokenizer.ggml.tokens",):
        assert _strings(theirs.fields[key]) == _strings(mine[key])
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type", "llama.attention.head_count_kv"):
        assert _numbers(theirs.fields[key]) == _numbers(mine[key]), key


@pytest.mark.parametrize(("kind", "version", "qtype"), [("ggjt", 1, "Q4_0"), ("ggjt", 2, "Q4_0"), ("ggjt", 2, "Q8_0"),
                                                        ("ggjt", 1, "Q5_0"), ("ggmf", 1, "Q4_1")])
def test_old_quantized_blocks_are_refused(tiny, tmp_path, capsys, kind, version, qtype):
    src = write_ggml(tiny["model"], tiny["vocab"], tmp_path / f"old.{kind}{version}.{qtype}.bin", qtype, kind, version)
    out = tmp_path / "x.gguf"
    assert main(["upgrade-ggml", str(src), str(out), *OPTS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "old block layout" in err, err
    assert f"{kind} v{version}" in err and not out.exists()
    with pytest.raises(UserError, match="old block layout"):
        load_text_model(src, OPTIONS)


@pytest.mark.parametrize("qtype", ["Q5_0", "Q5_1"])
def test_ggjt_v2_q5_blocks_are_read(tiny, tmp_path, qtype):
    """Q5_0/Q5_1 blocks did not change from ggjt v2 to v3 (llama.cpp #1508 changed Q4_0/Q4_1/Q8_0 only)."""
    v2 = write_ggml(tiny["model"], tiny["vocab"], tmp_path / "v2.bin", qtype, "ggjt", 2)
    v3 = write_ggml(tiny["model"], tiny["vocab"], tmp_path / "v3.bin", qtype, "ggjt", 3)
    for src in (v2, v3):
        assert main(["upgrade-ggml", str(src), str(src.with_suffix(".gguf")), *OPTS]) == 0
    ours, ref = _tensors(v2.with_suffix(".gguf")), _tensors(v3.with_suffix(".gguf"))
    assert ours == ref
    assert {t for t, _, _ in ours.values()} == {0, {"Q5_0": 6, "Q5_1": 7}[qtype]}
    with torch.no_grad():
        a = load_text_model(v2, OPTIONS).eval()(IDS)
        b = load_text_model(v3.with_suffix(".gguf")).eval()(IDS)
    assert torch.equal(a, b)
    import transformers

    try:  # transformers' GGUF loader dequantizes with gguf-py: an independent reader of the upgraded file
        ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="v2.gguf").eval()
    except Exception as exc:  # transformers without GGUF support (4.30)
        pytest.skip(f"transformers cannot load GGUF here: {exc}")
    with torch.no_grad():
        assert (a - ref(IDS).logits).abs().max().item() < 1e-4


def test_one_part_of_a_split_model_is_refused(tiny, tmp_path, capsys):
    """ggml/ggmf 13B+ came as x.bin, x.bin.1, ...; a part holds n_embd / n_parts embedding columns."""
    data = bytearray(write_ggml(tiny["model"], tiny["vocab"], tmp_path / "m.bin", "F16", "ggmf", 1).read_bytes())
    n_embd = int.from_bytes(data[12:16], "little")  # magic, version, n_vocab, n_embd
    data[12:16] = (2 * n_embd).to_bytes(4, "little")
    part = tmp_path / "ggml-model-f16.bin"
    part.write_bytes(bytes(data))
    assert main(["upgrade-ggml", str(part), str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(part) in err and "2-part ggmf model" in err, err
