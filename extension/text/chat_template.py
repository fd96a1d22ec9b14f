"""Render Hugging Face-style Jinja chat templates in a bounded sandbox.

Templates come from configs and from downloaded GGUFs (``tokenizer.chat_template``), so they are
untrusted code: jinja2's ``ImmutableSandboxedEnvironment`` keeps them from touching Python
objects, and this module bounds their time and memory. The time limit is checked on every line
the compiled template executes (a trace on the template's own frames only, so other code runs
untraced), which stops nested ``{% for %}`` loops that make no calls; ``*``, ``**``, ``+`` and ``%``,
the filters and ``str`` methods that grow text (``center``, ``indent``, ``format``, ``replace``, ``join``,
``ljust``/``rjust``/``zfill``/``expandtabs``, ``str.format``) are checked before they build a big string,
list or number, and the output is bounded as it is generated.

The environment is the one transformers' ``apply_chat_template`` (and llama-cpp-python's
``Jinja2ChatFormatter``) gives templates: ``trim_blocks``/``lstrip_blocks``, ``{% break %}``/``{% continue %}``,
``raise_exception``, ``strftime_now`` (Mistral 3 puts today's date in its system prompt), ``tojson`` without
ASCII escapes, and ``{% generation %}`` blocks rendered as plain text.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
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


_DIGITS = re.compile(r"\d+")
_NESTED_WIDTH = re.compile(r"\{[^{}]*:[^{}]*\{|%[-+ #0]*\*")  # "{:{}}" / "%*d": a width taken from the arguments
_WIDTH_METHODS = ("center", "ljust", "rjust", "zfill")
_GROWING_METHODS = frozenset(_WIDTH_METHODS + ("expandtabs", "replace", "join"))


def _too_big() -> TemplateLimitError:
    return TemplateLimitError("the chat template builds a string or list over the size limit")


def _check(size: int) -> None:
    if size > MAX_CHARS:
        raise _too_big()


def _text_size(value: Any) -> int:
    """About how many characters ``str(value)`` takes: exact for text, shallow for containers."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        return sum(len(item) if isinstance(item, str) else 16 for item in value) + 4 * len(value)
    return 32


def _format_size(fmt: str, values: Iterable[Any]) -> int:
    """An upper bound of what ``fmt % values`` or ``fmt.format(*values)`` makes: widths and precisions are the
    digits in ``fmt`` (literal digits count too: harmless), every field may repeat the longest value."""
    values = list(values)
    runs = _DIGITS.findall(fmt)
    if any(len(run) > 8 for run in runs):
        return MAX_CHARS + 1
    fields = fmt.count("%") + fmt.count("{")
    widths = sum(map(int, runs))
    if _NESTED_WIDTH.search(fmt):
        widths += sum(abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
    return len(fmt) + widths + fields * max(map(_text_size, values), default=0)


def _method_size(name: str, text: str, args: tuple, kwargs: dict) -> int:
    """What ``text.<name>(*args, **kwargs)`` makes at most, for the ``str`` methods that grow text."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name in _WIDTH_METHODS:
        return max(len(text), first if isinstance(first, int) else 0)
    if name == "expandtabs":
        return len(text) + text.count("\t") * (first if isinstance(first, int) else 8)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = text.count(old) if old else len(text) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        return len(text) + count * max(len(new) - len(old), 0)
    if name == "join" and isinstance(first, list):
        return len(text) * max(len(first) - 1, 0) + sum(_text_size(item) for item in first)
    return len(text)


def _bounded_filter(filter_fn: Callable, size: Callable[..., int]) -> Callable:
    """``filter_fn`` refusing a call whose result ``size(*args)`` would pass the limit (jinja's pass-context
    marker is kept by ``functools.wraps``)."""

    @functools.wraps(filter_fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check(size(*args, **kwargs))
        return filter_fn(*args, **kwargs)

    return bounded


def _bound_filters(filters: dict[str, Callable]) -> None:
    """Wrap jinja's filters that grow text (filters are called directly, not through the sandbox's ``call``)."""
    def join_size(_ctx: Any, items: list, d: str = "", attribute: Any = None) -> int:
        return len(str(d)) * max(len(items) - 1, 0) + _text_size(items)

    def indent_size(s: Any, width: Any = 4, *_: Any, **__: Any) -> int:
        text = str(s) if isinstance(s, str) else ""
        step = width if isinstance(width, int) else len(str(width))
        return len(text) + (text.count("\n") + 1) * max(step, 0)

    sizes = {
        "center": lambda value, width=80: max(_text_size(value), width if isinstance(width, int) else 0),
        "indent": indent_size,
        "format": lambda value, *args, **kwargs: _format_size(str(value), [*args, *kwargs.values()]),
        "replace": lambda _ctx, s, old, new, count=None: _method_size(
            "replace", str(s), (str(old), str(new)) + ((count,) if count is not None else ()), {}),
        "join": join_size,
    }
    for name, size in sizes.items():
        filters[name] = _bounded_filter(filters[name], size)
    join = filters["join"]

    @functools.wraps(join)
    def join_listed(ctx: Any, value: Any, *args: Any, **kwargs: Any) -> str:
        return join(ctx, list(value), *args, **kwargs)  # sized once, then joined (a generator would be spent)

    filters["join"] = join_listed


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
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if _size(seq) is not None and isinstance(times, int) and _size(seq) * times > MAX_CHARS:
                        raise _too_big()
            elif operator == "+":
                if _size(left) is not None and _size(right) is not None and _size(left) + _size(right) > MAX_CHARS:
                    raise _too_big()
            elif operator == "%" and isinstance(left, str):
                values = right.values() if isinstance(right, dict) else right if isinstance(right, tuple) else [right]
                _check(_format_size(left, values))
            elif (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
                  and left.bit_length() * right > _MAX_INT_BITS):
                raise TemplateLimitError("the chat template computes a number over the size limit")
            return super().call_binop(context, operator, left, right)

        def call(self, context, obj, /, *args: Any, **kwargs: Any) -> Any:
            owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
            if isinstance(owner, str) and name in _GROWING_METHODS:
                if name == "join" and args:
                    args = (list(args[0]),) + args[1:]  # sized once, then joined (a generator would be spent)
                _check(_method_size(name, owner, args, kwargs))
            return super().call(context, obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            fmt, is_map = value.__self__, value.__name__ == "format_map"

            def bounded(*args: Any, **kwargs: Any) -> str:
                mapping = args[0] if is_map and args and isinstance(args[0], dict) else {}
                _check(_format_size(fmt, [*args, *kwargs.values(), *mapping.values()]))
                return wrapped(*args, **kwargs)

            return bounded

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_extension()])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    _bound_filters(env.filters)
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
