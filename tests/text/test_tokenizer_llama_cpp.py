"""Our GGUF tokenizer gives exactly llama.cpp's token ids.

- llama.cpp's own test vectors: every ``models/ggml-vocab-*.gguf`` of the llama-cpp-python sdist
  (LORA_BRIDGE_LLAMA_CPP) with an SPM, gpt2 or gemma4 vocabulary, against its ``.gguf.inp``/``.gguf.out``
  files and against llama-cpp-python itself (BOS/special-token parsing, end-of-generation tokens).
- A byte-level BPE trained in code with the `tokenizers` BPE trainer and written to a vocab-only
  qwen2 GGUF for each ``tokenizer.ggml.pre`` (also those whose vocabulary the sdist does not ship);
  llama-cpp-python (``vocab_only=True``) is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textutil import llama_cpp_script, needs_llama_cpp

from extension.errors import UserError
from extension.text.gguf_model import read_gguf_metadata
from extension.text.tokenizer import Tokenizer, bytes_to_unicode

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = "<tool>"
# Tokens no merge sequence reaches: llama3-style pre-tokenizers (ignore_merges) still use them whole.
UNREACHABLE = ["xyzzyplugh", "Ġxyzzyplugh"]
PRES = ["qwen2", "llama-bpe", "gpt-2", "default", "smollm", "dbrx", "qwen35", "tekken", "chatglm-bpe", "glm4",
        "falcon", "deepseek-llm", "deepseek-coder", "deepseek-v3"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "I'm sure you don't know what they've done.",
    "Numbers: 12345, 3.14159, 2024-06-01, 1,000,000 and 42!", "naïve café résumé Ångström über straße",
    "日本語のテキストと中文文本，还有한국어。", "emoji 😀🎉👍🏽 and ✓ marks ★",
    "    indented code:\n\tif x == 1:\n\t\treturn y\n",
    "Hello   World!!  multiple   spaces\n\n\nnew paragraphs", "def foo(bar): return bar * 2  # comment",
    "<html><body>Tag soup &amp; entities</body></html>", "UPPER lower MiXeD CaSe 'quoted' \"double\"",
    "Русский текст и ελληνικά γράμματα", "tabs\tand\r\nwindows line endings\r\n", "x=1; y=22; z=333; w=4444",
]

TEXTS = [
    "", " ", "  ", "hello", " hello", "hello ", "  hello  world  ", "   leading", "trailing   ", "a  \t b",
    "a\nb", "a\n\nb", "\n\n", " \n \n ", "a \n\n b", "abc  \n  def", "\r\r\n", "a\r\nb", "!!\n\n", "\tindent\n\t\tmore",
    "12345", "1234567", "3.14", "x 12345678 y", "1,000,000", "$100 + 20% = <x>", "½ ² Ⅷ ٣",
    "don't", "I'm", "it's", "DON'T WE'LL", "they've she'd", "'S 'LL 'Ve", "'s 's", "''", "'", "a'", "A'B",
    "naïve café", "ångström über straße", "e\u0301\u0302x", "ǅungla", "Ελληνικά", "Русский", "ק ไทย",
    "日本語", "日本語 テキスト", "中文，標點。", "mixed: abc日本123😀!", "😀🎉👍🏽", "😀\n😀",
    "x\u00a0y", "\u3000full width", "\u2009thin", "w\u200bx", "a\x85b", "a\u2028b", "\x1c\x1d", "a\ue000\ue001b",
    "Hello   World!!", "!!!???", " !!", "@@@ abc", "...", "unseenZq",
    "xyzzyplugh", " xyzzyplugh", "xyzzypl",
    "<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>", "foo<|im_end|>bar", " <|im_start|> ", "<|im_start|><|im_end|>",
    "a<tool>b", " <tool> ",
]


def _train(full_alphabet: bool) -> tuple[list[str], list[str]]:
    """(tokens, merges) of a small byte-level BPE; without the full alphabet some bytes have no token."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet() if full_alphabet else []
    trainer = trainers.BpeTrainer(vocab_size=600 if full_alphabet else 300, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=alphabet, show_progress=False)
    lines = [f"{a} {b}" for a in _CORPUS for b in _CORPUS] if full_alphabet else _CORPUS[:5]
    tok.train_from_iterator(lines, trainer)
    state = json.loads(tok.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    tokens = [t for t, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])]
    return tokens + UNREACHABLE + [USER_DEFINED], merges


def write_bpe_gguf(path, pre: str, tokens: list[str], merges: list[str], add_bos: bool | None = None):
    """A vocab-only qwen2 GGUF (hparams, no tensors) with a gpt2 tokenizer; bos = <|endoftext|>, eos = <|im_end|>."""
    import gguf

    types = [3 if t in SPECIALS else 4 if t == USER_DEFINED else 1 for t in tokens]
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def vocabs():
    pytest.importorskip("tokenizers")
    return {"full": _train(True), "partial": _train(False)}


def _pair(tmp_path, vocabs, pre, alphabet="full", add_bos=None):
    from llama_cpp import Llama

    tokens, merges = vocabs[alphabet]
    path = write_bpe_gguf(tmp_path / f"{pre}-{alphabet}.gguf", pre, tokens, merges, add_bos)
    ours = Tokenizer.from_metadata(read_gguf_metadata(path)[1], str(path))
    return ours, Llama(str(path), vocab_only=True, verbose=False)


def _mismatches(ours, llm, texts):
    bad = []
    for text in texts:
        for add_bos in (False, True):
            for special in (False, True):
                want = llm.tokenize(text.encode(), add_bos=add_bos, special=special)
                got = ours.encode(text, add_special=add_bos, parse_special=special)
                if got != want:
                    bad.append((text, add_bos, special, got, want))
    return bad


@needs_llama_cpp
@pytest.mark.llama_cpp
@pytest.mark.parametrize("alphabet", ["full", "partial"])
@pytest.mark.parametrize("pre", PRES)
def test_bpe_ids_match_llama_cpp(tmp_path, vocabs, pre, alphabet):
    ours, llm = _pair(tmp_path, vocabs, pre, alphabet)
    assert len(ours) == llm.n_vocab()
    assert _mismatches(ours, llm, TEXTS) == []
    whole = llm.tokenize(b"xyzzyplugh", add_bos=False) == [ours.tokens.index("xyzzyplugh")]
    assert whole is (pre in ("llama-bpe", "tekken", "glm4"))  # ignore_merges was exercised
    if alphabet == "partial":  # missing byte tokens were exercised (llama.cpp drops such bytes)
        assert bytes_to_unicode()[0xF0] not in ours.tokens


@needs_llama_cpp
@pytest.mark.llama_cpp
@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe"])
def test_bpe_decode_round_trip_matches_llama_cpp(tmp_path, vocabs, pre):
    ours, llm = _pair(tmp_path, vocabs, pre)
    for text in TEXTS:
        ids = ours.encode(text, add_special=False, parse_special=True)
        assert ours.decode(ids, skip_special=False) == text
        assert llm.detokenize(ids, special=True).decode("utf-8") == text


@needs_llama_cpp
@pytest.mark.llama_cpp
@pytest.mark.parametrize(("pre", "add_bos", "expected"),
                         [("llama-bpe", None, True), ("llama-bpe", False, False), ("qwen2", None, False),
                          ("qwen2", True, True)])
def test_add_bos_default_and_override(tmp_path, vocabs, pre, add_bos, expected):
    """llama3-style pre-tokenizers add BOS unless the file says otherwise; others only when it says so."""
    ours, llm = _pair(tmp_path, vocabs, pre, add_bos=add_bos)
    assert ours.add_bos is expected
    assert (llm.tokenize(b"hi")[:1] == [ours.bos_id]) is expected
    assert _mismatches(ours, llm, ["hi", " <|im_start|>x"]) == []


def test_unknown_pre_is_a_user_error(tmp_path, vocabs):
    tokens, merges = vocabs["full"]
    path = write_bpe_gguf(tmp_path / "odd.gguf", "no-such-pre", tokens, merges)
    with pytest.raises(UserError, match="tokenizer.ggml.pre 'no-such-pre' is not supported"):
        Tokenizer.from_metadata(read_gguf_metadata(path)[1], str(path))


# -- llama.cpp's own vocabularies and test vectors ------------------------------------------------------------------

# vocabulary file -> the #20 families (or other users) whose GGUFs carry it
SHIPPED = {
    "llama-spm": "llama (Llama-2, Mistral-7B)", "llama-bpe": "llama (Llama-3.x)", "qwen2": "qwen2, qwen3, qwen3moe",
    "qwen35": "qwen35", "phi-3": "phi3", "gemma-4": "gemma4", "gpt-2": "gpt2", "starcoder": "starcoder2",
    "refact": "granite (code)", "mpt": "mpt (olmo regex)", "baichuan": "baichuan",
}
# gguf-py's reader takes seconds per 100k-token vocabulary: the quick run checks one SPM, Phi-3's and the qwen2 one
QUICK = ["llama-spm", "phi-3", "qwen2"]
# shipped too, used by no #20 family: checked in the slow run only
SHIPPED_OTHERS = ["command-r", "deepseek-llm", "deepseek-coder", "falcon", "aquila", "gpt-neox"]
_SEP = "\n__ggml_vocab_test__\n"
# chat-template text: special tokens in the text, whitespace after them (Phi-3 strips it), BOS written twice
_CHAT_TEXTS = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|user|>\nhi<|end|>\n<|assistant|>\n ok",
               "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "[INST] hi [/INST] ok</s>",
               "<s> </s> <|endoftext|> <|end|> hi", "[gMASK]<sop><|user|>\nhi<|assistant|>\nok"]


def _models_dir() -> Path | None:
    found = llama_cpp_script("models/ggml-vocab-llama-spm.gguf")
    return found.parent if found else None


def _vectors(path: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs of a .gguf.inp/.gguf.out pair, read as llama.cpp's test-tokenizer-0 reads them."""
    with open(path.with_name(path.name + ".inp"), encoding="utf-8", newline="") as f:  # keeps "\r\n"
        raw = f.read()
    texts = raw.split(_SEP)
    texts = texts[:-1] if raw.endswith(_SEP) else texts
    with open(path.with_name(path.name + ".out"), encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")[:len(texts)]
    assert len(lines) == len(texts)
    return [(text, [int(x) for x in line.split()]) for text, line in zip(texts, lines, strict=True)]


def _check_shipped(name: str) -> None:
    import llama_cpp
    from llama_cpp import Llama

    folder = _models_dir()
    if folder is None:
        pytest.skip("set LORA_BRIDGE_LLAMA_CPP to the unpacked llama-cpp-python sdist (llama.cpp's vocabularies)")
    path = folder / f"ggml-vocab-{name}.gguf"
    ours = Tokenizer.from_metadata(read_gguf_metadata(path)[1], str(path))
    llm = Llama(str(path), vocab_only=True, verbose=False)
    try:
        _compare_shipped(name, path, ours, llm, llama_cpp)
    finally:
        llm.close()


def _compare_shipped(name, path, ours, llm, llama_cpp) -> None:
    own = path.with_name(path.name + ".inp").is_file()
    # a vocabulary without vectors is checked on the texts of one that has them
    pairs = _vectors(path if own else path.with_name("ggml-vocab-qwen35.gguf"))
    if own:
        wrong = [(text, ours.encode(text, add_special=False), ids) for text, ids in pairs
                 if ours.encode(text, add_special=False) != ids]
        assert wrong == [], f"{name}: differs from llama.cpp's test vectors"
    assert len(ours) == llm.n_vocab()
    texts = [text for text, _ in pairs] + _CHAT_TEXTS
    assert _mismatches(ours, llm, texts) == []
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    eog = {i for i in range(len(ours)) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert ours.eog_ids == eog
    if ours.model != "llama":  # SPM's decode drops the space llama.cpp adds in front (llama.cpp keeps it)
        for text, _ in pairs:
            ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert ours.decode(ids, skip_special=False) == llm.detokenize(ids, special=True).decode("utf-8", "replace")


@needs_llama_cpp
@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in SHIPPED])
def test_shipped_vocabulary_matches_llama_cpp(name):
    """Ids equal llama.cpp's test vectors and llama-cpp-python's (BOS, special tokens parsed or not), same EOG set."""
    _check_shipped(name)


@needs_llama_cpp
@pytest.mark.llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED_OTHERS)
def test_other_shipped_vocabularies_match_llama_cpp(name):
    _check_shipped(name)
