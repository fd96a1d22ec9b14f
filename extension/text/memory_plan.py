"""What a text run will need in memory, estimated before the model loads; ``auto`` checkpointing and the fit check.

The estimate is built from the base's header (``TextConfig``: widths, layers, vocabulary) and the
file's size, the run's LoRA settings, and the tokens of one micro-batch (batch size x the longest
tokenized sample), as the parts the engine holds at a step's peak:

- weights: the base's tensors as the file stores them (memory-mapped, read on use; an HF folder is
  held as float32);
- LoRA parameters, their gradients and the optimizer's state (float32);
- activations: what autograd keeps per token of every layer for the backward (``layer_floats``:
  norm inputs and outputs, attention's Q, K, V (repeated for grouped-query attention) and output,
  the feed-forward's gate, up, activation and product), or, with checkpointing, each layer's input,
  the kept projection outputs (``recompute.KEPT_BYTES`` at most) and one layer's full set during its
  recompute; plus the backward's gradients of one layer's activations and the loss's slices;
- scratch: the largest weight dequantized whole (``quant.matmul_chunking``) and the loss's
  vocabulary slice (``lm_loss.slice_budget``);
- the run's own objects: tokenizer, samples, model objects (``RUN_OBJECTS``).

``tests/text/test_memory_plan.py`` checks the per-token activation figure against the bytes
autograd actually saves, family by family, and ``benchmarks/bench_text_7b.py`` prints the estimate
next to the measured peak.

The budget is what the run may use: the available RAM (``MemAvailable``) on the CPU, the free VRAM
on a GPU, or ``LORA_BRIDGE_MEMORY_BUDGET`` (e.g. ``6G``) when set. ``auto`` turns checkpointing on
when the estimate without it passes the budget, and on the CPU also when the run's own tensors
would pass ``AUTO_OVERHEAD`` above the weights (the project's goal: peak RSS within the base's size
+ 2 GiB, of which the interpreter and torch take about 0.4 GiB). A run whose smallest estimate does
not fit stops before loading anything, in one line naming what to change.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .._converters import converters
from ..config import TrainConfig
from ..errors import UserError
from .base_gguf import ggml_options
from .families import FAMILIES, TextConfig, tensor_names
from .gguf_model import read_text_config
from .lm_loss import slice_budget
from .quant import matmul_chunking
from .recompute import plan_kept

T = converters.gguf_py.installed_gguf().MODEL_TENSOR


GIB = 1 << 30
AUTO_OVERHEAD = 3 * GIB // 2  # CPU: auto keeps the run's tensors above the weights within this
RUN_OBJECTS = 300 << 20  # tokenizer, samples, model objects, later imports (measured at 7B: 0.25-0.3 GB)
HEAP_SLACK = 1.15  # glibc keeps freed blocks between long-lived ones: measured peaks ran 10-15% over the parts
BUDGET_ENV = "LORA_BRIDGE_MEMORY_BUDGET"
MIN_TOKENS = 2  # the shortest usable sample: one token and the one it predicts
_STATE_FLOATS = {"adamw": 2.0, "adamw8bit": 0.5, "prodigy": 4.0, "adafactor": 1.0}  # optimizer state per parameter
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Estimate:
    """Bytes of each part of a run's peak (see the module docstring)."""

    weights: int
    lora: int
    activations: int
    scratch: int
    objects: int
    checkpointing: bool

    @property
    def total(self) -> int:
        """The estimated peak: the parts, with the heap's slack on everything but the mapped weights."""
        return self.weights + int(HEAP_SLACK * (self.lora + self.activations + self.scratch + self.objects))

    @property
    def overhead(self) -> int:
        """The run's own memory above the weights."""
        return self.total - self.weights

    def describe(self) -> str:
        """``7.9 GiB (weights 3.5 GiB, LoRA + optimizer 640 MiB, activations 2.9 GiB, scratch 320 MiB, ...)``."""
        return (f"{size_text(self.total)} (weights {size_text(self.weights)}, LoRA + optimizer "
                f"{size_text(self.lora)}, activations {size_text(self.activations)}, scratch "
                f"{size_text(self.scratch)}, other {size_text(self.objects)})")


@dataclass(frozen=True)
class Budget:
    """Bytes a run may use, and where the figure comes from (for the log and messages)."""

    bytes: int
    source: str
    device: str  # "cpu" or "cuda"


@dataclass(frozen=True)
class Plan:
    """The run's checkpointing choice and the line that explains it."""

    checkpointing: bool
    line: str
    estimate: Estimate


def size_text(n: float) -> str:
    """``7.9 GiB`` from 1 GiB up, else ``640 MiB``."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"


def layer_floats(cfg: TextConfig, tokens_per_sample: int) -> int:
    """float32 values autograd keeps per token of one decoder layer for its backward (LoRA on the projections).

    The inputs of attention and of the feed-forward (the LoRA matmuls keep them: 2 x width), each
    norm's input (the pre- and post-norms the family's gguf-py table lists), Q, K and V as
    scaled_dot_product_attention keeps them (K and V repeated to all heads) and its output (4 x the
    heads' width), Q/K norms' inputs, and the gated feed-forward's gate, up, activation and product
    (4 x its width; a non-gated one keeps its up projection's output and activation, 2 x). Soft-capped
    attention (Gemma 2) goes through explicit scores: 2 (heads x tokens) blocks per token.
    ``tests/text/test_memory_plan.py`` compares this with what autograd keeps.
    """
    h, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    kinds = set(tensor_names(cfg.arch).values()) if cfg.arch in FAMILIES else set()  # gguf-py's table
    norms = 2 if cfg.pre_norms else 0
    norms += (T.ATTN_POST_NORM in kinds) + (T.FFN_POST_NORM in kinds)  # Gemma's and OLMo 2's post-norms
    family = FAMILIES.get(cfg.arch)
    gated = family is None or not any(module == "mlp.c_fc" for _, module in family.modules)
    floats = h * (2 + norms) + 4 * q + cfg.num_heads + (4 if gated else 2) * f  # non-gated: c_fc's output, act
    if T.ATTN_Q_NORM in kinds:
        floats += q + kv
    if cfg.attn_softcap:
        floats += 2 * cfg.num_heads * tokens_per_sample
    return floats


def lora_parameters(cfg: TextConfig, targets: list[str], rank: int) -> int:
    """LoRA parameters of one run: rank x (in + out) of every targeted projection."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q), "gate_proj": (f, h),
              "up_proj": (f, h), "down_proj": (h, f), "qkv_proj": (q + 2 * kv, h), "gate_up_proj": (2 * f, h),
              "c_fc": (f, h), "c_proj": (h, f)}  # StarCoder 2's non-gated FFN
    per_layer = sum(rank * sum(shape) for name, shape in shapes.items() if any(t.endswith(name) for t in targets))
    head = rank * (cfg.vocab_size + h) if any(t.endswith("lm_head") for t in targets) else 0
    return per_layer * cfg.num_layers + head


def _largest_whole(cfg: TextConfig, device: str) -> int:
    """Elements of the largest weight a matmul dequantizes whole (else by chunks): its scratch space."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    q = cfg.num_heads * cfg.head_dim
    family = FAMILIES.get(cfg.arch)
    fused = family is not None and any(module.endswith("gate_up_proj") for _, module in family.modules)
    chunk, whole = matmul_chunking(device)
    sizes = [h * f * (2 if fused else 1), h * q, h * cfg.vocab_size]
    return max(s if s <= whole else chunk for s in sizes)


def estimate_peak(cfg: TextConfig, weight_bytes: int, config: TrainConfig, tokens_per_sample: int,
                  checkpointing: bool, device: str = "cpu", targets: list[str] | None = None) -> Estimate:
    """The estimated peak of a run on ``cfg`` (see the module docstring for the parts)."""
    batch = int(config.batch_size)
    tokens = batch * int(tokens_per_sample)
    per_layer = layer_floats(cfg, int(tokens_per_sample)) * 4 * tokens
    h, n = cfg.hidden_size, cfg.num_layers
    if checkpointing:  # each layer's input, the kept projection outputs, one layer's recompute
        widths = {"down_proj": n * h, "o_proj": n * h, "q_proj": n * cfg.num_heads * cfg.head_dim,
                  "k_proj": n * cfg.num_kv_heads * cfg.head_dim, "v_proj": n * cfg.num_kv_heads * cfg.head_dim}
        kept = sum(tokens * 4 * widths[name] for name in plan_kept(widths, tokens))
        held = n * tokens * 4 * h + kept + per_layer
    else:
        held = cfg.num_layers * per_layer
    backward = tokens * 4 * (3 * h + 2 * cfg.intermediate_size)  # a layer's activation gradients in flight
    weights_per_slice, logits_per_slice = slice_budget(device)
    rows = max(64, min(cfg.vocab_size, weights_per_slice // max(1, h), logits_per_slice // max(1, tokens)))
    loss = 4 * (rows * h + tokens * rows + 3 * tokens * h)
    scratch = 4 * _largest_whole(cfg, device) + loss
    names = list(targets if targets is not None else config.lora_target_modules)
    params = lora_parameters(cfg, names, int(config.lora_rank))
    state = _STATE_FLOATS.get(str(config.optimizer), 2.0)
    return Estimate(weights=int(weight_bytes), lora=int(params * 4 * (2 + state)), activations=int(held + backward),
                    scratch=int(scratch), objects=RUN_OBJECTS, checkpointing=checkpointing)


def parse_bytes(text: str) -> int:
    """``6G``, ``6GiB``, ``6000M``, ``6442450944`` -> bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_budget(device: torch.device | str, before_start: bool = False) -> Budget:
    """What a run on ``device`` may use: ``LORA_BRIDGE_MEMORY_BUDGET``, else free VRAM (CUDA) or available RAM.

    ``before_start``: the most the run may get once it starts; on CUDA the card's total memory, since
    the WebUI frees its own models from VRAM only when the run starts (``webui/host.py``).
    """
    kind = torch.device(device).type
    override = os.environ.get(BUDGET_ENV, "").strip()
    if override:
        try:
            return Budget(parse_bytes(override), BUDGET_ENV, kind)
        except ValueError:
            raise UserError(f"{BUDGET_ENV}={override!r} is not a size; write e.g. 6G or 6000M, or unset it") from None
    if kind == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if before_start:
            return Budget(int(total), "total VRAM", kind)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return Budget(int(free + cached), "free VRAM", kind)
    available = _meminfo_available()
    if available is None:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except Exception:  # psutil missing or unsupported here: no limit known, nothing refused
            return Budget(1 << 62, "unknown (no /proc/meminfo, no psutil)", kind)
    return Budget(available, "available RAM", kind)


def _refusal(base: object, config: TrainConfig, estimate: Estimate, budget: Budget, tokens: int | None,
             explicit_off: bool) -> UserError:
    change = "set gradient_checkpointing to auto or true, " if explicit_off else ""
    if tokens is None:  # before tokenizing: even the shortest samples do not fit, so only the base or memory helps
        return UserError(
            f"{base}: this run needs about {estimate.describe()} even with the shortest samples, but the "
            f"{budget.source} is {size_text(budget.bytes)}; {change}use a smaller quant of the base, or free memory")
    return UserError(
        f"{base}: this run needs about {estimate.describe()} but the {budget.source} is "
        f"{size_text(budget.bytes)}; {change}lower max_length (longest sample {tokens} tokens) or batch_size "
        f"({config.batch_size}), use a smaller quant of the base, or free memory")


def plan_checkpointing(config: TrainConfig, cfg: TextConfig, weight_bytes: int, tokens_per_sample: int | None,
                       device: torch.device | str, base: object = "base_model",
                       targets: list[str] | None = None) -> Plan:
    """Whether the run checkpoints (``gradient_checkpointing`` true, false or auto), or UserError when it cannot fit.

    Runs before the model loads; the plan's line goes to the run's log. ``tokens_per_sample`` None:
    the samples are not tokenized yet (``check_fit``); the estimate counts ``MIN_TOKENS`` per sample
    against the most the run may get (``memory_budget(before_start=True)``).
    """
    kind = torch.device(device).type
    budget = memory_budget(device, before_start=tokens_per_sample is None)
    setting = config.gradient_checkpointing

    def estimate(on: bool) -> Estimate:
        return estimate_peak(cfg, weight_bytes, config, tokens_per_sample or MIN_TOKENS, on, kind, targets)

    plain, low = estimate(False), estimate(True)
    if setting is True or setting is False:
        chosen = low if setting else plain
        if chosen.total > budget.bytes:
            raise _refusal(base, config, chosen, budget, tokens_per_sample, explicit_off=not setting and
                           low.total <= budget.bytes)
        return Plan(bool(setting), f"memory: estimated peak {chosen.describe()}; {budget.source} "
                                   f"{size_text(budget.bytes)}", chosen)
    if low.total > budget.bytes:
        raise _refusal(base, config, low, budget, tokens_per_sample, explicit_off=False)
    over_budget = plain.total > budget.bytes
    over_overhead = kind == "cpu" and plain.overhead > AUTO_OVERHEAD
    if not (over_budget or over_overhead):
        return Plan(False, f"gradient_checkpointing auto: off (estimated peak {plain.describe()} fits the "
                           f"{budget.source}, {size_text(budget.bytes)})", plain)
    why = (f"above the {budget.source}, {size_text(budget.bytes)}" if over_budget else
           f"{size_text(plain.overhead)} above the weights, more than {size_text(AUTO_OVERHEAD)}")
    return Plan(True, f"gradient_checkpointing auto: on (estimated peak without it {plain.describe()}, {why}; "
                      f"with it {size_text(low.total)})", low)


def weight_bytes(base: Path, cfg: TextConfig) -> int:
    """Bytes the base's weights take in memory: the file (mapped) or, for an HF folder, its tensors as float32."""
    if base.is_dir():
        h, f = cfg.hidden_size, cfg.intermediate_size
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        layer = h * (2 * q + 2 * kv) + 3 * h * f
        return 4 * (cfg.num_layers * layer + 2 * cfg.vocab_size * h)
    return base.stat().st_size


def check_fit(config: TrainConfig, device: torch.device | str) -> Plan:
    """The fit check before a run starts (tab, REST, CLI): UserError, one line, for a run that cannot fit.

    Reads only the base's header (a GGUF's without its vocabulary; a GGML header or an HF folder's
    config.json) and counts the shortest samples against the most the run may get, so it refuses only
    what the engine's own check (``plan_checkpointing`` on the tokenized samples) would refuse too.
    """
    base = Path(str(config.base_model)).expanduser()
    cfg = read_text_config(base, ggml_options(config), vocabulary=False)
    return plan_checkpointing(config, cfg, weight_bytes(base, cfg), None, device, base)
