"""Text training data: plain text, instruction jsonl and chat jsonl, tokenized with the base's tokenizer.

Formats (``data_format: auto`` decides per file):

- ``.txt``: one sample per line, or, when the file has blank lines, one sample per paragraph.
- ``.jsonl`` instruction rows: ``{"instruction": ..., "input": ... (optional), "output": ...}``.
- ``.jsonl`` chat rows: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``,
  the last message from the assistant. Rows ``{"text": ...}`` are plain text.

Instruction rows become a user + assistant chat. Chats are rendered with ``chat_template`` from the
config, else the GGUF's ``tokenizer.chat_template``, else ``DEFAULT_CHAT_TEMPLATE`` below (plain
``### User:`` / ``### Assistant:`` headers, which need no special tokens). With
``train_on_responses_only`` the loss covers only the assistant turns: each reply up to and including its
first end-of-generation token (llama.cpp's: ``<|im_end|>``, ``<end_of_turn>``, ``<|end|>``, ``</s>``, ...);
a reply the template ends with none gets the end-of-turn token (else EOS) appended, as the model must emit it.
Each assistant turn is tokenized apart from the text before it, as llama.cpp tokenizes the prompt it answers.
A reply starts where the conversation and its generation prompt part (Gemma 4's prompt adds an empty thought
channel that the history leaves out: the reply is trained as the history renders it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..cancel import cancel_point
from ..errors import UserError
from . import chat_template as templates
from .tokenizer import Tokenizer

IGNORE = -100
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}### {{ message['role'] | capitalize }}:\n{{ message['content'] }}\n\n"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
_MAX_REPORTED = 5


@dataclass
class Sample:
    """One training sequence: token ids and labels (``IGNORE`` where no loss is taken)."""

    ids: list[int]
    labels: list[int]
    text: str = ""


def render_chat(template: str, messages: list[dict], tokenizer: Tokenizer, add_generation_prompt: bool) -> str:
    """Render ``messages`` with a Hugging Face-style Jinja chat template (sandboxed, time- and size-bounded)."""
    return templates.render(template, messages=messages, add_generation_prompt=add_generation_prompt,
                                bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)


def char_budget(tokenizer: Tokenizer, max_length: int) -> int:
    """Characters of a text enough for its first ``max_length`` tokens, with room to spare.

    No token covers more characters than the longest token of the vocabulary, so a text cut
    there tokenizes to the same first ``max_length`` tokens; the rest would be cut anyway, and
    reading it costs time and memory (a 50 MB line took 11.7 GB to tokenize).
    """
    tokens = getattr(tokenizer, "tokens", None)
    vocab = getattr(getattr(tokenizer, "_tok", None), "get_vocab", None)
    if tokens is None and vocab is not None:
        tokens = list(vocab())
    longest = max((len(t) for t in tokens), default=0) if tokens else 0
    return 2 * max_length * max(longest, 16) + 1024


def chat_template_for(tokenizer: Tokenizer, configured: str | None = None) -> str:
    """The template chats are rendered with: ``configured``, else the base's own, else ``DEFAULT_CHAT_TEMPLATE``."""
    return configured or tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of a rendered chat prompt: special tokens parsed, BOS added unless the template wrote it."""
    ids = tokenizer.encode(prompt, add_special=False, parse_special=True)
    bos = tokenizer.bos_token
    if tokenizer.add_bos and tokenizer.bos_id is not None and not (bos and prompt.startswith(bos)):
        ids.insert(0, tokenizer.bos_id)
    return ids


class _Builder:
    """Turns rows into ``Sample``s with one tokenizer and settings."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, responses_only: bool, chat_template: str | None):
        self.tok = tokenizer
        self.max_length = max_length
        self.responses_only = responses_only
        self.template = chat_template_for(tokenizer, chat_template)
        self.max_chars = char_budget(tokenizer, max_length)

    def plain(self, text: str) -> Sample:
        text = text[: self.max_chars]
        ids = self.tok.encode(text, add_special=True)
        if self.tok.eos_id is not None and (not ids or ids[-1] != self.tok.eos_id):
            ids.append(self.tok.eos_id)
        return self._cut(Sample(ids, list(ids), text))

    def chat(self, messages: list[dict]) -> Sample:
        messages = [{**m, "content": m["content"][: self.max_chars]} for m in messages]
        full = render_chat(self.template, messages, self.tok, add_generation_prompt=False)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        starts = []
        for i in turns:
            history = render_chat(self.template, messages[:i], self.tok, add_generation_prompt=False)
            prompt = render_chat(self.template, messages[:i], self.tok, add_generation_prompt=True)
            # the reply starts where the generation prompt and the conversation part: at its end, or earlier
            # when the prompt adds what the history leaves out (Gemma 4's empty thought channel)
            start = len(os.path.commonprefix([full, prompt]))
            if (start < len(prompt) and not (full.startswith(history) and start >= len(history))) or (
                    starts and start < starts[-1]):
                raise templates.TemplateSplitError("the chat template does not render the conversation as "
                                                   "prompt + reply")
            starts.append(start)
        ids = prompt_ids(self.tok, full[:starts[0]])
        labels = [IGNORE] * len(ids)
        for n, (i, start) in enumerate(zip(turns, starts, strict=True)):
            end = starts[n + 1] if n + 1 < len(starts) else len(full)
            turn = render_chat(self.template, messages[:i + 1], self.tok, add_generation_prompt=False)
            # where the template ends this turn when it is the last one (Qwen3 renders earlier turns otherwise)
            cut = len(turn) if full.startswith(turn) and start <= len(turn) <= end else end
            reply, rest = self._encode(full[start:cut]), self._encode(full[cut:end])
            labels += self._reply_labels(reply, rest, last=end == len(full))
            ids += reply + rest
        if not self.responses_only:
            labels = list(ids)
        return self._cut(Sample(ids, labels, full))

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special=False, parse_special=True, space_prefix=False) if text else []

    def _reply_labels(self, reply: list[int], rest: list[int], last: bool) -> list[int]:
        """Labels of one assistant turn (``reply``, then ``rest`` up to the next turn): the reply up to its first
        end-of-generation token, or the one right after it (GLM-4's <|user|>); the last reply without one gets
        the end-of-turn token appended (``reply`` grows)."""
        end = next((k for k, t in enumerate(reply) if t in self.tok.eog_ids), None)
        if end is not None:
            return reply[:end + 1] + [IGNORE] * (len(reply) - end - 1 + len(rest))
        if rest and rest[0] in self.tok.eog_ids:
            return reply + rest[:1] + [IGNORE] * (len(rest) - 1)
        closing = self.tok.eot_id if self.tok.eot_id is not None else self.tok.eos_id
        if last and closing is not None:
            reply.append(closing)
        return list(reply) + [IGNORE] * len(rest)

    def _cut(self, sample: Sample) -> Sample:
        sample.ids = sample.ids[: self.max_length]
        sample.labels = sample.labels[: self.max_length]
        return sample


def _row_messages(row: object, fmt: str) -> list[dict] | str:
    """Messages of a jsonl row (or its plain text); ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    if "messages" in row and fmt in ("auto", "chat"):
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError("each message needs string 'role' and 'content'")
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's reply")
        return messages
    if "instruction" in row and fmt in ("auto", "instruction"):
        if not isinstance(row.get("output"), str) or not isinstance(row["instruction"], str):
            raise ValueError("instruction rows need string 'instruction' and 'output'")
        user = row["instruction"]
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("'input' must be a string")
        if extra.strip():
            user = f"{user}\n\n{extra}"
        return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    if isinstance(row.get("text"), str) and fmt in ("auto", "text"):
        return row["text"]
    wanted = {"auto": "'messages', 'instruction'/'output' or 'text'", "chat": "'messages'",
              "instruction": "'instruction' and 'output'", "text": "'text'"}[fmt]
    raise ValueError(f"no {wanted} key")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise UserError(f"{path}: no .txt or .jsonl files; put the training text there")
        return files
    if not path.is_file():
        raise UserError(f"{path}: training data not found; set train_data_dir to a .txt/.jsonl file or folder")
    if path.suffix.lower() not in (".txt", ".jsonl", ".json"):
        raise UserError(f"{path}: unsupported data file; use .txt (one sample per line or paragraph) or .jsonl")
    return [path]


def _text_samples(text: str) -> list[str]:
    """Paragraphs when the file has blank lines, else lines; empty ones dropped."""
    text = text.replace("\r\n", "\n")
    if re.search(r"\n[ \t]*\n", text.strip()):
        return [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    return [line.strip() for line in text.split("\n") if line.strip()]


@dataclass
class Row:
    """One sample as read from a data file, before tokenizing: plain text, chat messages, or what is wrong."""

    file: str
    line: int  # 0 for .txt samples (lines or paragraphs)
    item: str | list[dict] | None
    error: str = ""

    @property
    def where(self) -> str:
        """``"data.jsonl line 2"`` (or the file name for text samples)."""
        return f"{self.file} line {self.line}" if self.line else self.file


def read_rows(path: str | Path, data_format: str = "auto") -> tuple[list[Path], list[Row]]:
    """(files, rows) of a .txt/.jsonl file or folder, parsed and checked without a tokenizer.

    UserError for a missing/unreadable file; a bad jsonl row becomes a ``Row`` with ``error`` set.
    """
    files = _files(Path(path))
    rows: list[Row] = []
    for file in files:
        try:
            content = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
        if file.suffix.lower() == ".txt":
            if data_format in ("instruction", "chat"):
                raise UserError(f"{file}: data_format {data_format} needs a .jsonl file; use data_format text")
            rows.extend(Row(file.name, 0, text) for text in _text_samples(content))
            continue
        for number, line in enumerate(content.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                rows.append(Row(file.name, number, None, f"not valid JSON ({exc.msg})"))
                continue
            try:
                rows.append(Row(file.name, number, _row_messages(row, data_format)))
            except ValueError as exc:
                rows.append(Row(file.name, number, None, str(exc)))
    return files, rows


def raise_bad_rows(path: str | Path, bad: list[str]) -> None:
    """UserError naming the first bad rows (``"<file> line N: what"``), if there are any."""
    if bad:
        more = f" (and {len(bad) - _MAX_REPORTED} more)" if len(bad) > _MAX_REPORTED else ""
        raise UserError(f"{path}: {len(bad)} bad row(s): " + "; ".join(bad[:_MAX_REPORTED]) + more
                        + "; fix or remove them")


def check_text_data(path: str | Path, data_format: str = "auto") -> tuple[int, int]:
    """(samples, files) of a text dataset; UserError for what ``load_text_dataset`` would refuse before tokenizing."""
    files, rows = read_rows(path, data_format)
    raise_bad_rows(path, [f"{r.where}: {r.error}" for r in rows if r.error])
    return len(rows), len(files)


def load_text_dataset(path: str | Path, tokenizer: Tokenizer, data_format: str = "auto", max_length: int = 512,
                      train_on_responses_only: bool = True, chat_template: str | None = None) -> list[Sample]:
    """Read and tokenize all samples; UserError with line numbers for bad rows, or for no usable sample."""
    path = Path(path)
    builder = _Builder(tokenizer, max_length, train_on_responses_only, chat_template)
    samples: list[Sample] = []
    bad: list[str] = []
    for row in read_rows(path, data_format)[1]:
        cancel_point()
        if row.error:
            bad.append(f"{row.where}: {row.error}")
            continue
        if not row.line:  # .txt: nothing the user wrote can fail here
            samples.append(builder.plain(row.item))
            continue
        try:
            samples.append(builder.plain(row.item) if isinstance(row.item, str) else builder.chat(row.item))
        except templates.TemplateLimitError as exc:  # every other row would spend the same time: stop now
            raise UserError(f"{row.where}: {exc}") from None
        except UserError as exc:
            raise UserError(f"{row.where}: {exc}") from None
        except Exception as exc:  # template errors come as several jinja2 types
            bad.append(f"{row.where}: {templates.describe_error(exc)}")
    raise_bad_rows(path, bad)
    usable = [s for s in samples if sum(1 for x in s.labels[1:] if x != IGNORE) > 0]
    if not usable:
        raise UserError(f"{path}: no usable training samples (empty, or every reply cut off by max_length "
                        f"{max_length}); add data or raise max_length")
    return usable


def collate(samples: list[Sample], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Right-pad a batch: (ids, labels) of equal length; padding is ``pad_id`` / ``IGNORE``."""
    width = max(len(s.ids) for s in samples)
    ids = [s.ids + [pad_id] * (width - len(s.ids)) for s in samples]
    labels = [s.labels + [IGNORE] * (width - len(s.labels)) for s in samples]
    return ids, labels
