"""Render Hugging Face-style Jinja chat templates in a bounded sandbox.

Templates come from configs and from downloaded GGUFs (``tokenizer.chat_template``), so they are
untrusted code: jinja2's ``ImmutableSandboxedEnvironment`` keeps them from touching Python
objects, and this module bounds their time and memory. The time limit is checked on every line
the compiled template executes (a trace on the template's own frames only, so other code runs
untraced), which stops nested ``{% for %}`` loops that make no calls; ``*``, ``**`` and ``+``
are checked before they build a big string, list or number, and the output is bounded as it is
generated.

The environment is the one transformers' ``apply_chat_template`` (and llama-cpp-python's
``Jinja2ChatFormatter``) gives templates: ``trim_blocks``/``lstrip_blocks``, ``{% break %}``/``{% continue %}``,
``raise_exception``, ``strftime_now`` (Mistral 3 puts today's date in its system prompt), ``tojson`` without
ASCII escapes, and ``{% generation %}`` blocks rendered as plain text.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

from ..errors import UserError

TIME_LIMIT = 2.0  # seconds per render; real templates take milliseconds
MAX_CHARS = 1 << 24  # output and any intermediate string or list
_MAX_INT_BITS = 4096
_TEMPLATE_FILE = "<template>"


class TemplateLimitError(UserError):
    """A chat template ran past its time or size limit."""


class TemplateSplitError(ValueError):
    """A chat template rendered a row, but not as prompt + reply (a bad row; ``describe_error`` keeps the message)."""


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _generation_extension():
    from jinja2.ext import Extension

    class GenerationBlocks(Extension):
        """transformers' ``{% generation %}...{% endgeneration %}`` marks assistant text; rendered as is."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return GenerationBlocks


def _environment():
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if _size(seq) is not None and isinstance(times, int) and _size(seq) * times > MAX_CHARS:
                        raise TemplateLimitError("the chat template builds a string or list over the size limit")
            elif operator == "+":
                if _size(left) is not None and _size(right) is not None and _size(left) + _size(right) > MAX_CHARS:
                    raise TemplateLimitError("the chat template builds a string or list over the size limit")
            elif (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
                  and left.bit_length() * right > _MAX_INT_BITS):
                raise TemplateLimitError("the chat template computes a number over the size limit")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_extension()])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


_ENV = None
_COMPILED: dict[str, Any] = {}


def compile_template(source: str):
    """The compiled template (cached per source); UserError naming the line of a syntax error."""
    global _ENV
    from jinja2 import TemplateSyntaxError

    if source not in _COMPILED:
        _ENV = _ENV or _environment()
        try:
            _COMPILED[source] = _ENV.from_string(source)
        except TemplateSyntaxError as exc:
            # the exception's text quotes the template line; only its position is reported
            raise UserError(f"the chat template has a syntax error at line {exc.lineno}; fix chat_template") from None
    return _COMPILED[source]


def render(source: str, time_limit: float = TIME_LIMIT, **variables: Any) -> str:
    """Render ``source`` with ``variables``; TemplateLimitError after ``time_limit`` s or ``MAX_CHARS`` of output."""
    template = compile_template(source)
    deadline = time.monotonic() + time_limit

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateLimitError(f"the chat template ran over {time_limit:g} s (runaway loops?); "
                                "fix chat_template or set one in the config")
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        parts, total = [], 0
        for piece in template.generate(**variables):
            total += len(piece)
            if total > MAX_CHARS:
                raise TemplateLimitError(f"the chat template's output passed {MAX_CHARS} characters; fix chat_template")
            parts.append(piece)
        return "".join(parts)
    finally:
        sys.settrace(previous)


def describe_error(exc: Exception) -> str:
    """What went wrong in a template, without quoting the template or the data it rendered."""
    from jinja2 import TemplateError, TemplateSyntaxError, UndefinedError

    if isinstance(exc, (UserError, TemplateSplitError)):  # our own words, naming no template or row text
        return str(exc)
    if isinstance(exc, TemplateSyntaxError):
        return f"chat template syntax error at line {exc.lineno}"
    if type(exc) is TemplateError:  # raise_exception(): the template author's message, as HF shows it
        return f"the chat template refused the row: {exc.message}"
    if isinstance(exc, UndefinedError):
        return "the chat template uses an undefined value"
    return f"the chat template failed ({type(exc).__name__})"
