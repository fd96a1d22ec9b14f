"""The GGUF tokenizer encodes like llama.cpp; text data formats, masks and bad rows."""

from __future__ import annotations

import json

import pytest
from textutil import needs_llama_cpp

from extension.errors import UserError
from extension.text.data import IGNORE, check_text_data, load_text_dataset
from extension.text.gguf_model import read_gguf_metadata
from extension.text.tokenizer import Tokenizer

TEXTS = ["the cat sat on the mat", "  hello  World!", "lora é 日本 ✓", "", "a\nb\n\nc", "the</s>cat<s>", " the",
         "thethe catdog", "zzz <0x41>"]
LLAMA_CPP_ONLY = ["▁x", "a ▁ b"]  # a literal ▁ is a space to SPM: no round trip, but must tokenize alike


@pytest.fixture(scope="module")
def tok(tiny):
    return Tokenizer.from_metadata(read_gguf_metadata(tiny["F32"])[1])


def test_bos_eos_from_file(tok, tiny):
    vocab = tiny["vocab"]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (vocab.bos_id, vocab.eos_id, True)
    assert tok.encode("the cat")[0] == vocab.bos_id
    assert tok.encode("the cat", add_special=False)[:1] == [vocab.piece_id("▁the")]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


@needs_llama_cpp
@pytest.mark.llama_cpp
def test_matches_llama_cpp_tokenizer(tok, tiny):
    from llama_cpp import Llama

    llm = Llama(str(tiny["F32"]), vocab_only=True, verbose=False)
    for text in TEXTS + LLAMA_CPP_ONLY:
        for add_bos in (True, False):
            for special in (False, True):
                want = llm.tokenize(text.encode(), add_bos=add_bos, special=special)
                assert tok.encode(text, add_special=add_bos, parse_special=special) == want, (text, add_bos, special)


def test_txt_lines_and_paragraphs(tok, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("the cat\nthe dog\n\n")
    paras = tmp_path / "paras.txt"
    paras.write_text("the cat\nsat\n\nthe dog\n")
    assert [s.text for s in load_text_dataset(lines, tok)] == ["the cat", "the dog"]
    samples = load_text_dataset(paras, tok)
    assert [s.text for s in samples] == ["the cat\nsat", "the dog"]
    assert samples[0].ids[0] == tok.bos_id and samples[0].ids[-1] == tok.eos_id
    assert samples[0].labels == samples[0].ids


def test_instruction_loss_on_response_only(tok, tmp_path):
    data = tmp_path / "inst.jsonl"
    data.write_text(json.dumps({"instruction": "name a pet", "input": "", "output": "a cat"}) + "\n")
    (sample,) = load_text_dataset(data, tok)
    assert "### User:\nname a pet" in sample.text and sample.text.endswith("### Assistant:\na cat\n\n")
    trained = [t for t, label in zip(sample.ids, sample.labels, strict=False) if label != IGNORE]
    assert tok.decode(trained).startswith("a cat") and trained[-1] == tok.eos_id
    (full,) = load_text_dataset(data, tok, train_on_responses_only=False)
    assert full.labels == full.ids


def test_chat_uses_template_and_masks(tok, tmp_path):
    data = tmp_path / "chat.jsonl"
    row = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "pet?"},
                        {"role": "assistant", "content": "the cat"}]}
    data.write_text(json.dumps(row) + "\n")
    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    (sample,) = load_text_dataset(data, tok, chat_template=template)
    assert sample.text == "<system>be brief<user>pet?<assistant>the cat"
    trained = [t for t, label in zip(sample.ids, sample.labels, strict=False) if label != IGNORE]
    assert tok.decode(trained) == "the cat"


def test_bad_rows_reported_with_line_numbers(tok, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join([
        json.dumps({"instruction": "a", "output": "b"}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"foo": 1}),
    ]) + "\n")
    with pytest.raises(UserError) as err:
        load_text_dataset(data, tok)
    message = str(err.value)
    assert "3 bad row(s)" in message and "line 2: not valid JSON" in message
    assert "line 3: the last message must be the assistant's reply" in message and "line 4" in message
    assert "\n" not in message


def test_check_without_tokenizer_refuses_the_same_rows(tok, tmp_path):
    """What Start checks (no tokenizer) refuses a bad jsonl with the line load_text_dataset gives."""
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "fine"}) + "\n{not json\n" + json.dumps({"foo": 1}) + "\n")
    with pytest.raises(UserError) as checked:
        check_text_data(data)
    with pytest.raises(UserError) as loaded:
        load_text_dataset(data, tok)
    assert str(checked.value) == str(loaded.value)
    assert "2 bad row(s): bad.jsonl line 2: not valid JSON" in str(checked.value)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    with pytest.raises(UserError, match="line 1: no 'instruction' and 'output' key"):
        check_text_data(chat, "instruction")
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "a.txt").write_text("one\n\ntwo\n")
    (folder / "b.jsonl").write_text(chat.read_text() + "\n")
    assert check_text_data(folder) == (3, 2)


def test_empty_dataset_is_a_user_error(tok, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no usable training samples"):
        load_text_dataset(empty, tok)


def test_bpe_matches_hf_byte_level_tokenizer():
    """gpt2-style BPE (tokenizer.ggml.model = gpt2) against the `tokenizers` library on a tiny trained vocab."""
    tokenizers = pytest.importorskip("tokenizers")
    corpus = ["the cat sat on the mat", "the dog ran to the mat", "hello world, it's 2024!", "naïve café ✓"] * 20
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, show_progress=False)
    state = json.loads(bpe.to_str())
    vocab = state["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": [1] * len(tokens)}
    ours = Tokenizer.from_metadata(meta)
    assert not ours.add_bos
    for text in ["the cat sat on the mat", "hello  world, it's 2024!", "naïve café ✓ unseen Zq", " lead", "a\n\nb"]:
        want = bpe.encode(text).ids
        assert ours.encode(text) == want, text
        assert ours.decode(want) == text


def test_a_template_that_does_not_split_into_prompt_and_reply_says_so(tok, tmp_path):
    """The row is refused with our own message, not "the chat template failed (ValueError)"."""
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    reversed_turns = "{% for m in messages|reverse %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(UserError) as err:
        load_text_dataset(data, tok, chat_template=reversed_turns)
    assert str(err.value) == (f"{data}: 1 bad row(s): chat.jsonl line 1: the chat template does not render the "
                              "conversation as prompt + reply; fix or remove them")
