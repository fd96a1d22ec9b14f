"""Try a text adapter where it was trained: the base's and the adapter's answers to one prompt.

Shared by the Text LoRA sub-tab's Try panel, ``lora-bridge generate`` and ``POST /lora-bridge/v1/generate``.
Both answers use the same prompt tokens (LoRA Bridge's tokenizer of the base), seed and sampling.
They come from llama.cpp when llama-cpp-python is installed and the base is a GGUF file, else from
LoRA Bridge's own torch model of the base (``generate.py``). The adapter is read and checked
against the base before either backend sees it (llama.cpp crashes on an adapter that does not fit).

One generation runs at a time in a process, never while a training job runs (and a training start
is refused while one runs: ``generation_running``); ``request_stop`` ends it early, with the
tokens so far. Nothing is kept afterwards: the torch model is dropped, the llama.cpp process has ended.
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._converters import converters
from ..errors import UserError
from ..jobs import JobBusyError
from .data import chat_template_for, prompt_ids, render_chat
from .families import FAMILIES, config_from_gguf
from .generate import Sampling, attach_adapter, generate_ids, set_scale
from .llama_check import llama_args, llama_cpp_available

BACKENDS = ("auto", "llama.cpp", "torch")
MAX_SCALE = 2.0

_SLOT = threading.Lock()
_STOP = threading.Event()


@dataclass
class TryResult:
    """What ``try_adapter`` answers: both texts, their token ids, which backend and why."""

    backend: str
    reason: str
    prompt: str
    base: str
    adapter: str
    base_ids: list[int] = field(default_factory=list)
    adapter_ids: list[int] = field(default_factory=list)
    scale: float = 1.0
    stopped: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """JSON-ready (REST)."""
        return asdict(self)


def generation_running() -> bool:
    """True while a Try generation runs in this process."""
    return _SLOT.locked()


def request_stop() -> bool:
    """Ask the running generation to end with what it has; False when none runs."""
    if not _SLOT.locked():
        return False
    _STOP.set()
    return True


@contextlib.contextmanager
def _generation_slot(training_running: Callable[[], bool]) -> Iterator[None]:
    if not _SLOT.acquire(blocking=False):
        raise JobBusyError("a Try generation is already running; wait for it or press Stop")
    _STOP.clear()
    try:
        if training_running():  # checked once the slot is ours: a training start now sees generation_running()
            raise JobBusyError("a training job is running; Try generates when it has finished (or stop it first)")
        yield
    finally:
        _STOP.clear()
        _SLOT.release()


class _Base:
    """The base model file/folder, its tokenizer and what ends an answer."""

    def __init__(self, base: str | Path) -> None:
        from .tokenizer import HFTokenizer, Tokenizer

        path = Path(str(base)).expanduser()
        self.path, self.gguf, self.llama_args = path, False, {}
        if path.is_dir():
            self.tokenizer, self.context, self.stop_ids = HFTokenizer(str(path)), 0, set()
        else:
            self.gguf = _is_gguf(path)
            from .gguf_model import read_gguf_metadata

            _, meta = read_gguf_metadata(path)
            if meta.get("general.type") == "adapter":
                raise UserError(f"{path}: is a LoRA adapter, not a base model; pass the base .gguf as the base")
            self.tokenizer = Tokenizer.from_metadata(meta, str(path))
            arch = meta.get("general.architecture", "")
            self.context = int(meta.get(f"{arch}.context_length", 0) or 0)
            if arch in FAMILIES:  # what llama.cpp's own tools would run (llama_check.llama_args)
                with contextlib.suppress(UserError):  # a rope scaling training refuses: llama.cpp's defaults
                    self.llama_args = llama_args(config_from_gguf(path, meta))
            self.stop_ids = set(self.tokenizer.eog_ids)  # llama.cpp's end-of-generation tokens (<|end|>, ...)
        if self.tokenizer.eos_id is not None:
            self.stop_ids.add(int(self.tokenizer.eos_id))


def _is_gguf(path: Path) -> bool:
    """True for a GGUF file; UserError for a missing file or a legacy GGML one (llama.cpp no longer loads those)."""
    if not path.is_file():
        raise UserError(f"{path}: base model not found; give a .gguf file or an HF model folder")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return True
    raise UserError(f"{path}: not a GGUF base (legacy GGML?); use the .gguf copy a training run writes beside it, "
                    "or `lora-bridge upgrade-ggml` it first")


def checked_adapter(adapter: str | Path, base: Path):
    """(path, the adapter in canonical form) once it fits ``base`` (names, shapes, architecture, ranks): what
    llama.cpp must never be given otherwise (it crashes). UserError names the file and the problem."""
    path = Path(str(adapter)).expanduser()
    if not path.exists():
        raise UserError(f"{path}: adapter not found; give a GGUF adapter or PEFT folder (a text run writes both)")
    try:
        loaded = converters.load_adapter(path, base=base)
    except converters.AdapterError as exc:
        raise UserError(f"{path}: cannot be read as a LoRA adapter ({exc})") from None
    problems = converters.check_against_base(loaded, base)
    if problems:
        raise UserError(f"{path}: does not fit the base {base.name}: {problems[0]} ({len(problems)} problem(s)); "
                        "use the base it was trained on")
    return path, loaded


def _prompt_ids(base: _Base, prompt: str, chat: bool, system: str) -> tuple[str, list[int]]:
    """(prompt text as the model sees it, its token ids): plain, or one user turn in the base's chat template."""
    if not str(prompt or "").strip():
        raise UserError("the prompt is empty; type something for the model to continue or answer")
    tok = base.tokenizer
    if not chat:
        return prompt, tok.encode(prompt, add_special=True)
    messages = ([{"role": "system", "content": system}] if str(system or "").strip() else [])
    messages.append({"role": "user", "content": prompt})
    try:
        text = render_chat(chat_template_for(tok), messages, tok, add_generation_prompt=True)
    except Exception as exc:  # jinja2's TemplateError, or a template that raises on a system message
        raise UserError(f"{base.path.name}: its chat template failed ({exc}); try without the chat template") from None
    return text, prompt_ids(tok, text)


def _choose_backend(wanted: str, base: _Base) -> tuple[str, str]:
    """(backend, why) for ``wanted`` (auto, llama.cpp or torch)."""
    if wanted not in BACKENDS:
        raise UserError(f"backend {wanted!r} is not one of {', '.join(BACKENDS)}")
    have = llama_cpp_available()
    if wanted == "llama.cpp":
        if not have:
            raise UserError("backend llama.cpp needs llama-cpp-python: pip install llama-cpp-python, or use backend "
                            "torch")
        if not base.gguf:
            raise UserError(f"{base.path}: llama.cpp runs GGUF bases only; convert the folder with llama.cpp's "
                            "convert_hf_to_gguf.py, or use backend torch")
        return "llama.cpp", "asked for"
    if wanted == "torch":
        return "torch", "asked for"
    if have and base.gguf:
        return "llama.cpp", "llama-cpp-python is installed"
    why = "llama-cpp-python is not installed" if not have else "the base is not a GGUF file"
    return "torch", f"{why}: LoRA Bridge's own model of the base, slower"


def _run_llama_cpp(base: _Base, path: Path, adapter, scale: float, ids: list[int], sampling: Sampling,
                   n_ctx: int) -> tuple[list[int], list[int], bool]:
    from .llama_generate import generate_llama_cpp

    with tempfile.TemporaryDirectory(prefix="lora-bridge-try-") as tmp:
        gguf = path
        if adapter.source_format != "gguf":  # a PEFT folder or safetensors file: llama.cpp takes GGUF only
            gguf = converters.save_adapter(adapter, Path(tmp) / "adapter.gguf", to="gguf", base=base.path)
        out, stopped = generate_llama_cpp(base.path, Path(gguf), scale, ids, sampling, base.stop_ids, n_ctx,
                                          torch.get_num_threads(), _STOP.is_set, base.llama_args)
    return out["base"], out["adapter"], stopped


def _run_torch(base: _Base, path: Path, adapter, scale: float, ids: list[int], sampling: Sampling,
               slot: Callable[[bool], AbstractContextManager]) -> tuple[list[int], list[int], bool]:
    from ..training.heap import release_free_heap
    from .engine import training_device
    from .gguf_model import load_text_model
    from .quant import release_buffers

    device = training_device()
    model = None
    try:
        with slot(device.type == "cuda"):
            model = load_text_model(base.path)
            layers = attach_adapter(model, adapter, str(path))
            model.to(device).eval()
            set_scale(layers, 0.0)
            base_ids, stopped = generate_ids(model, ids, sampling, base.stop_ids, _STOP.is_set)
            adapter_ids: list[int] = []
            if not stopped:
                set_scale(layers, scale)
                adapter_ids, stopped = generate_ids(model, ids, sampling, base.stop_ids, _STOP.is_set)
            return base_ids, adapter_ids, stopped
    finally:
        del model
        release_buffers()
        gc.collect()
        release_free_heap(device)  # the process may be a long-running WebUI
        if device.type == "cuda":
            torch.cuda.empty_cache()


def try_adapter(base: str | Path, adapter: str | Path, prompt: str, scale: float = 1.0, chat: bool = False,
                system: str = "", sampling: Sampling | None = None, backend: str = "auto",
                training_running: Callable[[], bool] = lambda: False,
                slot: Callable[[bool], AbstractContextManager] = lambda on_gpu: contextlib.nullcontext()) -> TryResult:
    """The base's and the adapter's answers to ``prompt`` (``scale`` 0–2 on the adapter), same seed and sampling.

    ``training_running``: refuse while it says True. ``slot(on_gpu)``: held while the torch backend
    generates (the WebUI's generation queue when a text run would hold it, see ``WebUIHost.generation_slot``).
    """
    sampling = (sampling or Sampling()).check()
    if not 0.0 <= float(scale) <= MAX_SCALE:
        raise UserError(f"adapter scale must be between 0 and {MAX_SCALE:g}, not {scale}")
    with _generation_slot(training_running):
        started = time.monotonic()
        info = _Base(base)
        path, loaded = checked_adapter(adapter, info.path)
        text, ids = _prompt_ids(info, prompt, chat, system)
        n_ctx = len(ids) + int(sampling.max_new_tokens) + 8
        if info.context and n_ctx > info.context:
            raise UserError(f"prompt ({len(ids)} tokens) plus max new tokens ({sampling.max_new_tokens}) exceed the "
                            f"base's context of {info.context} tokens; shorten one")
        chosen, why = _choose_backend(backend, info)
        if chosen == "llama.cpp":
            base_ids, adapter_ids, stopped = _run_llama_cpp(info, path, loaded, float(scale), ids, sampling, n_ctx)
        else:
            base_ids, adapter_ids, stopped = _run_torch(info, path, loaded, float(scale), ids, sampling, slot)
        decode = info.tokenizer.decode
        return TryResult(chosen, why, text, decode(base_ids), decode(adapter_ids), base_ids, adapter_ids,
                         float(scale), stopped, round(time.monotonic() - started, 2))


_BODY_KEYS = {"base": str, "lora": str, "prompt": str, "scale": float, "chat": bool, "system": str, "backend": str,
              "max_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int}


def options_from_body(data: dict) -> dict:
    """``try_adapter`` keywords from a REST body (the CLI's flag names); UserError naming a bad or unknown key."""
    unknown = sorted(set(data) - set(_BODY_KEYS))
    if unknown:
        raise UserError(f"generate: unknown key {unknown[0]!r}; known: {', '.join(_BODY_KEYS)}")
    for key in ("base", "lora", "prompt"):
        if not str(data.get(key) or "").strip():
            raise UserError(f'generate needs "{key}"')
    values = {}
    for key, kind in _BODY_KEYS.items():
        if key in data and data[key] is not None:
            value = data[key]
            number = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
            if not (number if kind in (int, float) else isinstance(value, kind)):
                raise UserError(f'generate: "{key}" must be a {kind.__name__}, not {value!r}')
            values[key] = kind(value)
    sampling = Sampling(**{name: values.pop(key) for key, name in (
        ("max_tokens", "max_new_tokens"), ("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
        ("seed", "seed")) if key in values})
    return {"base": values.pop("base"), "adapter": values.pop("lora"), "sampling": sampling, **values}
