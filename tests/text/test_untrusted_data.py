"""Untrusted chat templates and oversized text lines: bounded time and memory, one line, no content echoed."""

from __future__ import annotations

import json
import threading

import pytest

from extension.errors import UserError
from extension.text.data import char_budget, load_text_dataset
from extension.text.gguf_model import read_gguf_metadata
from extension.text.tokenizer import Tokenizer

RUNAWAY = ("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in messages %}{% endfor %}"
           "{% endfor %}{% endfor %}")
CHAT = {"messages": [{"role": "user", "content": "pet?"}, {"role": "assistant", "content": "the cat"}]}


@pytest.fixture(scope="module")
def tok(tiny):
    return Tokenizer.from_metadata(read_gguf_metadata(tiny["F32"])[1])


def _finishes(fn, seconds: float = 60.0):
    """Run ``fn`` in a daemon thread; (finished, result or exception). A runaway render must not hang the suite."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["result"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("result")


def _chat_file(tmp_path, rows: int = 3):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(CHAT) + "\n" for _ in range(rows)))
    return data


def test_runaway_template_from_the_config_stops(tok, tmp_path):
    data = _chat_file(tmp_path)
    done, result = _finishes(lambda: load_text_dataset(data, tok, chat_template=RUNAWAY))
    assert done, "the template kept running"
    assert isinstance(result, UserError), result
    assert "chat.jsonl line 1" in str(result) and "ran over" in str(result) and "\n" not in str(result)


def test_runaway_template_from_the_gguf_stops(tiny, tmp_path):
    from extension.tiny.llama import write_tiny_gguf

    path = write_tiny_gguf(tiny["model"], tmp_path / "t.gguf", vocab=tiny["vocab"], chat_template=RUNAWAY)
    tok = Tokenizer.from_metadata(read_gguf_metadata(path)[1])
    assert tok.chat_template == RUNAWAY
    done, result = _finishes(lambda: load_text_dataset(_chat_file(tmp_path), tok))
    assert done, "the template kept running"
    assert isinstance(result, UserError) and "ran over" in str(result), result


@pytest.mark.parametrize("template", [
    "{{ 'x' * 2000000000 }}",
    "{{ 7 ** 900000000 }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{% for i in range(100000) %}{{ 'y' * 2000 }}{% endfor %}",
])
def test_template_size_bombs_stop(tok, tmp_path, template):
    done, result = _finishes(lambda: load_text_dataset(_chat_file(tmp_path), tok, chat_template=template))
    assert done
    assert isinstance(result, UserError) and "size limit" in str(result) or "characters" in str(result), result


GROWING = ["'%099999999d' % 1", "'%*d' % (50000000, 1)", "'%050000000d'|format(1)", "'a'|center(50000000)",
           "'a'.center(50000000)", "'a'.ljust(50000000)", "'a'.zfill(50000000)", "'{:>50000000}'.format(1)",
           "'{:>{}}'.format(1, 50000000)", "'{a:>50000000}'.format_map({'a': 1})",
           "('a' * 10000)|replace('a', 'b' * 10000)", "('a' * 10000).replace('a', 'b' * 10000)",
           "range(100000)|join('x' * 1000)", "('x' * 1000).join(range(100000)|map('string'))",
           "('\t' * 10000).expandtabs(10000)", "('a\n' * 100000)|indent(1000)"]


@pytest.mark.parametrize("expression", GROWING)
def test_text_growing_filters_and_methods_stop_before_they_allocate(expression):
    """Each builds 50 MB to 1 GB in one call, kept in a variable so the output stays short: the output bound alone
    comes too late; the call is refused before it runs."""
    from extension.text.chat_template import TemplateLimitError, render

    with pytest.raises(TemplateLimitError, match="size limit"):
        render(f"{{% set x = {expression} %}}{{{{ x|length }}}}")


def test_text_growing_filters_and_methods_still_work_at_normal_sizes():
    from extension.text.chat_template import render

    template = ("{{ '%s: %d' % ('a', 3) }}|{{ 'x'|center(5) }}|{{ 'ab'.replace('a', 'c') }}|{{ range(3)|join('-') }}|"
                "{{ ', '.join(['a', 'b']) }}|{{ '{} {:>3}'.format(1, 'b') }}|{{ '%5.2f'|format(3.14159) }}|"
                "{{ 'a\nb'|indent(2, true) }}|{{ messages|join(', ', attribute='content') }}")
    assert render(template, messages=[{"content": "m"}, {"content": "n"}]) == \
        "a: 3|  x  |cb|0-1-2|a, b|1   b| 3.14|  a\n  b|m, n"


def test_template_errors_do_not_quote_the_template(tok, tmp_path):
    data = _chat_file(tmp_path, rows=1)
    for template in ("{{ SECRET-TOKEN-42 }", "{% if %}SECRET-TOKEN-42{% endif %}"):
        with pytest.raises(UserError) as err:
            load_text_dataset(data, tok, chat_template=template)
        assert "SECRET-TOKEN-42" not in str(err.value) and "line 1" in str(err.value), err.value


def test_llama_style_template_renders_as_before(tok, tmp_path):
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] | trim }}"
                " [/INST]{% else %}{{ m['content'] | trim }}{{ eos_token }}{% endif %}{% endfor %}")
    (sample,) = load_text_dataset(_chat_file(tmp_path, rows=1), tok, chat_template=template)
    assert sample.text == f"{tok.bos_token}[INST] pet? [/INST]the cat{tok.eos_token}"


class _Spy:
    """The tokenizer, refusing texts far longer than max_length can use (what a 50 MB line costs)."""

    def __init__(self, tok, limit):
        self._tok, self.limit, self.longest = tok, limit, 0

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def encode(self, text, *args, **kwargs):
        self.longest = max(self.longest, len(text))
        assert len(text) <= self.limit, f"tokenizer was given {len(text)} characters"
        return self._tok.encode(text, *args, **kwargs)


@pytest.mark.parametrize("kind", ["txt", "jsonl text", "jsonl chat"])
def test_long_line_is_cut_before_tokenizing(tok, tmp_path, kind):
    line = "the cat sat on the mat " * 400_000  # 9 MB on one line
    if kind == "txt":
        data = tmp_path / "long.txt"
        data.write_text(line + "\n")
    elif kind == "jsonl text":
        data = tmp_path / "long.jsonl"
        data.write_text(json.dumps({"text": line}) + "\n")
    else:
        data = tmp_path / "long.jsonl"
        data.write_text(json.dumps({"messages": [{"role": "user", "content": line},
                                                 {"role": "assistant", "content": line}]}) + "\n")
    spy = _Spy(tok, char_budget(tok, 64) + 200)  # a message, plus the template's headers around it
    (sample,) = load_text_dataset(data, spy, max_length=64, train_on_responses_only=False)
    assert len(sample.ids) == 64
    assert spy.longest > 0


def test_cut_keeps_the_tokens_max_length_uses(tok, tmp_path):
    line = "the cat sat, lora é 日本 ✓ on the mat! " * 1000
    data = tmp_path / "mid.txt"
    data.write_text(line + "\n")
    (sample,) = load_text_dataset(data, tok, max_length=64)
    full = tok.encode(line.strip(), add_special=True)
    assert sample.ids == full[:64]
