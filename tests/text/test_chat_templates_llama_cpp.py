"""The #20 families' chat templates: rendered as llama.cpp renders them, and responses-only masking per template.

The templates are the real ones llama.cpp ships in the llama-cpp-python sdist (``models/templates``,
LORA_BRIDGE_LLAMA_CPP): Qwen3, Gemma 2 (Gemma 3 has the same turns; its own template is not shipped),
Gemma 4, Phi-3.5, GLM-4.6 and Mistral Small 3.2 (mistral3). The references are llama-cpp-python's
``Jinja2ChatFormatter`` (the jinja path llama.cpp's GGUF chat uses) and llama.cpp's built-in template code
(``llama_chat_apply_template``), which is compared where its detection renders the template's text.
"""

from __future__ import annotations

import ctypes
import json

import pytest
from textutil import llama_cpp_script, needs_llama_cpp

from extension.text import chat_template
from extension.text.data import IGNORE, load_text_dataset, prompt_ids
from extension.text.tokenizer import Tokenizer

TEMPLATES = {
    "qwen3": "Qwen-Qwen3-0.6B.jinja", "gemma": "google-gemma-2-2b-it.jinja", "gemma4": "google-gemma-4-31B-it.jinja",
    "phi3": "microsoft-Phi-3.5-mini-instruct.jinja", "glm4": "GLM-4.6.jinja",
    "mistral3": "Mistral-Small-3.2-24B-Instruct-2506.jinja",
}
# what llama.cpp's converter writes for each family: special tokens, bos/eos/eot, add_bos, general.name
FAMILY_VOCAB = {
    "qwen3": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                  bos="<|endoftext|>", eos="<|im_end|>", add_bos=False),
    "gemma": dict(specials=["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>",
                  add_bos=True),
    "gemma4": dict(specials=["<bos>", "<eos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>"], bos="<bos>",
                   eos="<eos>", add_bos=True),
    "phi3": dict(specials=["<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
                 bos="<s>", eos="<|endoftext|>", add_bos=True, name="Phi-3.5-mini-instruct"),
    "glm4": dict(specials=["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<think>",
                           "</think>"], bos=None, eos="<|endoftext|>", eot="<|user|>", add_bos=False),
    "mistral3": dict(specials=["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"],
                     bos="<s>", eos="</s>", add_bos=True),
}
SYSTEM = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
          {"role": "assistant", "content": "Hello!"}]
MULTI = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6, as before."}]
PROMPT = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
          {"role": "user", "content": "c"}]
USER_PROMPT = PROMPT[1:]
# the labelled text of MULTI per template: each assistant turn and the end-of-turn token the family stops at
EXPECTED_REPLIES = {
    "qwen3": ["4<|im_end|>", "<think>\n\n</think>\n\n6, as before.<|im_end|>"],
    "gemma": ["4<end_of_turn>", "6, as before.<end_of_turn>"],
    "gemma4": ["4<turn|>", "6, as before.<turn|>"],
    "phi3": ["4<|end|>", "6, as before.<|end|>"],
    "glm4": ["\n<think></think>\n4<|user|>", "\n<think></think>\n6, as before.<|user|>"],
    "mistral3": ["4</s>", "6, as before.</s>"],
}


def _template(name: str) -> str:
    path = llama_cpp_script(f"models/templates/{TEMPLATES[name]}")
    if path is None:
        pytest.skip("set LORA_BRIDGE_LLAMA_CPP to the unpacked llama-cpp-python sdist (llama.cpp's templates)")
    return path.read_text(encoding="utf-8")


def _ours(name: str, messages: list[dict], add_generation_prompt: bool) -> str:
    vocab = FAMILY_VOCAB[name]
    return chat_template.render(_template(name), messages=messages, add_generation_prompt=add_generation_prompt,
                                bos_token=vocab["bos"] or "", eos_token=vocab["eos"])


def _jinja(name: str, messages: list[dict], add_generation_prompt: bool) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = FAMILY_VOCAB[name]
    formatter = Jinja2ChatFormatter(_template(name), vocab["eos"], vocab["bos"] or "",
                                    add_generation_prompt=add_generation_prompt)
    return formatter(messages=messages).prompt


def _builtin(name: str, messages: list[dict]) -> str:
    """llama.cpp's built-in template code for the template it detects in the jinja text (generation prompt on)."""
    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for slot, message in zip(chat, messages, strict=True):
        keep += [message["role"].encode(), message["content"].encode()]
        slot.role, slot.content = keep[-2], keep[-1]
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(_template(name).encode(), chat, len(messages), True, buf, len(buf))
    assert 0 <= n < len(buf), f"llama.cpp does not detect the {name} template"
    return buf.raw[:n].decode()


@needs_llama_cpp
@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_template_renders_as_llama_cpp_jinja(name):
    """Same text as llama-cpp-python's Jinja2ChatFormatter, or the same refusal (Gemma has no system role)."""
    for messages, prompt in ((SYSTEM, False), (MULTI, False), (PROMPT, True), (USER_PROMPT, True)):
        try:
            want = _jinja(name, messages, prompt)
        except Exception as exc:  # noqa: BLE001 - the reference refuses: ours must refuse too, with its message
            with pytest.raises(Exception, match=str(exc)):
                _ours(name, messages, prompt)
            continue
        assert _ours(name, messages, prompt) == want
    if name == "qwen3":  # the think tags: an empty think block before the last reply, none before earlier ones
        assert "<|im_start|>assistant\n4<|im_end|>" in _ours(name, MULTI, False)
        assert "<think>\n\n</think>\n\n6, as before." in _ours(name, MULTI, False)


@needs_llama_cpp
@pytest.mark.llama_cpp
@pytest.mark.parametrize(("name", "messages"), [("qwen3", PROMPT), ("qwen3", USER_PROMPT), ("phi3", PROMPT),
                                                ("phi3", USER_PROMPT), ("gemma", USER_PROMPT)])
def test_prompt_matches_llama_cpp_builtin_template(name, messages):
    """Where llama.cpp's own template code renders the template's text, the prompt is the same (bar the BOS it
    leaves to the tokenizer). Not so for GLM-4.6 (no "<think></think>", a "\\n" after <|assistant|>) and Mistral 3
    (a space after [INST] and the other tags): llama.cpp's C++ renderers of those differ from the GGUF's jinja."""
    ours = _ours(name, messages, True)
    bos = FAMILY_VOCAB[name]["bos"]
    assert _builtin(name, messages) == (ours.removeprefix(bos) if bos and name != "qwen3" else ours)


# -- responses-only loss -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_vocab():
    """(tokens, merges) of a small byte-level BPE trained in code."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    words = [m["content"] for m in SYSTEM + MULTI + PROMPT] + ["assistant user model system think"]
    tok.train_from_iterator(words * 4, trainer)
    state = json.loads(tok.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    return [t for t, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])], merges


def _family_tokenizer(name: str, base_vocab) -> Tokenizer:
    """A gpt2 tokenizer with the family's special tokens and ids set as llama.cpp's converter sets them."""
    tokens, merges = base_vocab
    vocab = FAMILY_VOCAB[name]
    tokens = tokens + vocab["specials"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3 if t in vocab["specials"] else 1 for t in tokens],
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.eos_token_id": tokens.index(vocab["eos"]),
            "tokenizer.ggml.add_bos_token": vocab["add_bos"], "general.name": vocab.get("name", name)}
    if vocab["bos"]:
        meta["tokenizer.ggml.bos_token_id"] = tokens.index(vocab["bos"])
    if vocab.get("eot"):
        meta["tokenizer.ggml.eot_token_id"] = tokens.index(vocab["eot"])
    meta["tokenizer.chat_template"] = _template(name)
    return Tokenizer.from_metadata(meta, name)


def _labelled_runs(sample, tok: Tokenizer) -> list[str]:
    runs, run = [], []
    for token, label in zip(sample.ids, sample.labels, strict=True):
        if label == IGNORE:
            if run:
                runs.append(run)
            run = []
        else:
            assert label == token
            run.append(token)
    if run:
        runs.append(run)
    return [tok.decode(r, skip_special=False) for r in runs]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_responses_only_labels_each_assistant_turn_and_its_end(tmp_path, base_vocab, name):
    """Only the assistant turns carry loss: each reply plus the end-of-turn token the family stops at."""
    tok = _family_tokenizer(name, base_vocab)
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": MULTI}) + "\n", encoding="utf-8")
    (sample,) = load_text_dataset(data, tok, max_length=4096)
    assert _labelled_runs(sample, tok) == EXPECTED_REPLIES[name]
    history = _ours(name, MULTI[:1], False).removesuffix(FAMILY_VOCAB[name]["eos"])  # Phi-3.5 ends it with EOS
    head = prompt_ids(tok, history)
    assert sample.ids[:len(head)] == head and sample.labels[:len(head)] == [IGNORE] * len(head)
    (full,) = load_text_dataset(data, tok, max_length=4096, train_on_responses_only=False)
    assert full.ids == sample.ids and full.labels == full.ids


@needs_llama_cpp
@pytest.mark.llama_cpp
def test_try_stops_where_llama_cpp_ends_a_generation(tmp_path):
    """Try's answers end at every token llama.cpp ends a generation at, not only the file's eos/eot ids."""
    import llama_cpp
    from llama_cpp import Llama
    from test_tokenizer_llama_cpp import SPECIALS, write_bpe_gguf

    from extension.text.try_adapter import _Base

    tokens = [chr(c) for c in range(33, 127)] + ["ab"] + SPECIALS
    path = write_bpe_gguf(tmp_path / "v.gguf", "qwen2", tokens, ["a b"])
    llm = Llama(str(path), vocab_only=True, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        eog = {i for i in range(len(tokens)) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    finally:
        llm.close()
    assert eog == {tokens.index("<|endoftext|>"), tokens.index("<|im_end|>")}
    assert _Base(path).stop_ids == eog
