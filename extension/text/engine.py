"""Text LoRA training on a GGUF, legacy GGML or HF base; output a PEFT folder and a GGUF adapter.

Flow: load the base (weights stay packed), its tokenizer, the data; wrap the target layers with
LoRA; train with the shared optimizer/scheduler/checkpoint pieces; write
``<output_dir>/<output_name>/`` (PEFT) and ``<output_dir>/<output_name>.gguf`` (llama.cpp) through
the format layer, validated against the base; optionally compare llama.cpp's logits with torch's.

A legacy GGML base is first upgraded to GGUF (llama.cpp no longer loads GGML files, so that is the
file the adapter is used with); the copy is kept and reused, see ``base_gguf.py``.

``init_lora`` starts the LoRA from an existing adapter (``training/init_lora.py``).

Exact resume: the data order of each epoch comes from ``seed + epoch``, and the training state
(LoRA, optimizer, scheduler, RNG, position) is saved every ``save_steps`` steps and at the end,
so a killed run resumed with ``resume: auto`` ends with the same adapter, bitwise on CPU.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import torch

from .._converters import converters
from ..errors import UserError
from ..training.checkpoint import latest_state, load_training_state, restore_rng, save_training_state
from ..training.events import EventCallback, TrainingControl, TrainingEvent, TrainResult
from ..training.init_lora import load_text_init, text_layout
from ..training.optimizers import build_optimizer, setting
from ..training.progress import NonFiniteLoss, TensorBoardSink, Throughput, TqdmSink, check_finite, fan_out
from ..training.schedulers import build_scheduler
from .base_gguf import ggml_options, prepare_base_gguf
from .data import IGNORE, Sample, collate, load_text_dataset
from .gguf_model import TextModel, load_text_model
from .heap import keep_activations_in_heap, restore_heap_after_training, tune_heap_for_training
from .lora import LoraLinear, inject_lora, load_lora_state, lora_state, to_adapter
from .tokenizer import HFTokenizer, Tokenizer

_SAVE_DTYPES = {"fp16": "f16", "bf16": "bf16", "fp32": "f32"}


def load_base(config: Any) -> tuple[TextModel, Tokenizer | HFTokenizer, Path | None]:
    """(model, tokenizer, GGUF file for export/llama.cpp or None for HF folders)."""
    base = setting(config, "base_model", None)
    if not base:
        raise UserError("config: base_model is not set; give a .gguf, legacy GGML .bin or HF folder")
    base = Path(base)
    model = load_text_model(base, ggml_options(config))
    if base.is_dir():
        return model, HFTokenizer(str(base)), None
    tokenizer = Tokenizer.from_metadata(model.config.tokenizer, str(base))
    return model, tokenizer, base


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).tolist()


def _accelerator(config: Any):
    """(accelerate.Accelerator or None, autocast dtype or None)."""
    mp = str(setting(config, "mixed_precision", "no"))
    cuda = torch.cuda.is_available()
    if not cuda and mp == "fp16":
        mp = "bf16"  # fp16 autocast is GPU-only; bf16 is the CPU equivalent
    try:
        from accelerate import Accelerator

        acc = Accelerator(mixed_precision=mp, cpu=not cuda)
    except Exception:  # accelerate missing, or a process-wide state set up differently by another run
        acc = None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
    return acc, dtype


def _usage_lines(base_gguf: Path | None, adapter: Path) -> str:
    if base_gguf is None:
        return (f"llama.cpp: convert the base folder with llama.cpp's convert_hf_to_gguf.py, then\n"
                f"    llama-cli -m BASE.gguf --lora {adapter}")
    return (f"llama.cpp:  llama-cli -m {base_gguf} --lora {adapter}\n"
            "llama-cpp-python:\n"
            "    from llama_cpp import Llama\n"
            f"    llm = Llama(model_path={str(base_gguf)!r}, lora_path={str(adapter)!r})\n"
            "    print(llm('Your prompt', max_tokens=64)['choices'][0]['text'])")


class _Run:
    """One training run's state, so the loop reads as the algorithm."""

    def __init__(self, config: Any, callback: EventCallback | None, control: TrainingControl | None) -> None:
        self.config = config
        self.control = control or TrainingControl()
        self.output_dir = Path(setting(config, "output_dir", "output"))
        self.name = str(setting(config, "output_name", "my_lora"))
        logdir = setting(config, "logging_dir", None) or self.output_dir / "logs"
        self.emit = fan_out(callback if callback is not None else TqdmSink("text lora"), TensorBoardSink(logdir))
        self.state_root = self.output_dir / f"{self.name}-state"

    # -- outputs ----------------------------------------------------------------------------------

    def export(self, layers: dict[str, LoraLinear], arch: str, base_gguf: Path | None, base_dir: Path | None,
               suffix: str = "") -> list[Path]:
        """Write the GGUF adapter (and, for the final save, the PEFT folder); returns the paths."""
        adapter = to_adapter(layers, arch, {"lora_bridge.base_model": str(setting(self.config, "base_model", ""))})
        out: list[Path] = []
        gguf_dtype = str(setting(self.config, "gguf_adapter_dtype", "f32"))
        out.append(converters.save_adapter(adapter, self.output_dir / f"{self.name}{suffix}.gguf", to="gguf",
                                           base=base_gguf or base_dir, dtype=gguf_dtype, name=self.name, force=True))
        if not suffix:
            peft_dtype = _SAVE_DTYPES.get(str(setting(self.config, "save_precision", "fp32")), "f32")
            out.append(converters.save_adapter(adapter, self.output_dir / self.name, to="peft",
                                               base=base_gguf or base_dir, dtype=peft_dtype, name=self.name,
                                               force=True))
        return [Path(p) for p in out]


def train_text(config: Any, callback: EventCallback | None = None,
               control: TrainingControl | None = None) -> TrainResult:
    """Train a text LoRA as ``config`` says; see the module docstring for what is written."""
    run = _Run(config, callback, control)
    tune_heap_for_training()
    try:
        return _train(run)
    except NonFiniteLoss as exc:
        run.emit(TrainingEvent("error", message=str(exc)))
        return TrainResult("failed", message=str(exc))
    except converters.AdapterError as exc:
        run.emit(TrainingEvent("error", message=str(exc)))
        raise
    finally:
        restore_heap_after_training()  # the process may be a long-running WebUI


def _train(run: _Run) -> TrainResult:
    config = run.config
    seed = int(setting(config, "seed", 42))
    data_dir = setting(config, "train_data_dir", None)
    if not data_dir:
        raise UserError("config: train_data_dir is not set; give a .txt or .jsonl file (or a folder of them)")
    model, tokenizer, _ = load_base(config)
    samples = load_text_dataset(
        data_dir, tokenizer, data_format=str(setting(config, "data_format", "auto")),
        max_length=int(setting(config, "max_length", 512)),
        train_on_responses_only=bool(setting(config, "train_on_responses_only", True)),
        chat_template=setting(config, "chat_template", None),
    )
    batch_size = int(setting(config, "batch_size", 1))
    longest = max(len(s.ids) for s in samples)  # load_text_dataset refuses an empty dataset
    keep_activations_in_heap(model.largest_activation_bytes(batch_size * longest))
    model.limit_kept_outputs(batch_size * longest)  # checkpointing's kept outputs within a fixed budget
    run.output_dir.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        run.emit(TrainingEvent("log", message=line))

    base_gguf = prepare_base_gguf(config, run.output_dir, log)
    base_dir = Path(setting(config, "base_model", "")) if base_gguf is None else None

    torch.manual_seed(seed)
    rank = int(setting(config, "lora_rank", 16))
    layout, init = text_layout(config, model, base_gguf or base_dir, log)
    layers = inject_lora(model, layout.names, rank, float(setting(config, "lora_alpha", rank)),
                         float(setting(config, "lora_dropout", 0.0)), module_ranks=layout.ranks)
    if init is not None:
        load_text_init(layout, layers)
    ranks = "/".join(str(r) for r in sorted({layer.rank for layer in layers.values()}))
    model.gradient_checkpointing = bool(setting(config, "gradient_checkpointing", False))
    params = [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    optimizer = build_optimizer(params, config)
    accelerator, autocast_dtype = _accelerator(config)

    accum = int(setting(config, "gradient_accumulation_steps", 1))
    n_batches = math.ceil(len(samples) / batch_size)
    steps_per_epoch = math.ceil(n_batches / accum)
    max_steps = setting(config, "max_train_steps", None)
    total = int(max_steps) if max_steps else int(setting(config, "epochs", 1)) * steps_per_epoch
    scheduler = build_scheduler(optimizer, config, total)

    step, epoch, batch_in_epoch = 0, 0, 0
    resume = setting(config, "resume", None)
    if resume:
        path = latest_state(run.state_root) if str(resume) == "auto" else Path(resume)
        if path is not None:
            state = load_training_state(path)
            load_lora_state(layers, state.lora)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            restore_rng(state.rng)
            step, epoch, batch_in_epoch = state.step, state.epoch, state.batch_in_epoch

    pad_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    save_steps = int(setting(config, "save_steps", 0))
    max_norm = float(setting(config, "max_grad_norm", 0.0))
    meter = Throughput(total)
    run.emit(TrainingEvent("start", step=step, total_steps=total, epoch=epoch,
                           message=f"text LoRA: {len(samples)} samples, {len(layers)} layers, rank {ranks}, "
                                   f"base {model.config.arch} ({setting(config, 'base_model', '')})"))
    model.train()
    loss_value = None
    status = "done"
    while step < total and status == "done":
        order = _epoch_order(len(samples), seed, epoch)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        epoch_now = epoch
        while epoch == epoch_now and step < total:
            group = [[samples[i] for i in b] for b in batches[batch_in_epoch:batch_in_epoch + accum]]
            loss_value = _optimizer_step(model, group, params, optimizer, scheduler, pad_id, max_norm,
                                         accelerator, autocast_dtype)
            batch_in_epoch += len(group)
            step += 1
            check_finite(loss_value, step)
            rate, eta = meter.update(step)
            run.emit(TrainingEvent("step", step=step, total_steps=total, epoch=epoch, loss=loss_value,
                                   lr=scheduler.get_last_lr()[0], it_per_second=rate, eta_seconds=eta))
            if batch_in_epoch >= len(batches):
                epoch, batch_in_epoch = epoch + 1, 0
            if save_steps and step % save_steps == 0 and step < total:
                _save_state(run, layers, optimizer, scheduler, step, epoch, batch_in_epoch)
                paths = run.export(layers, model.config.arch, base_gguf, base_dir, suffix=f"-{step:06d}")
                run.emit(TrainingEvent("saved", step=step, total_steps=total, paths=[str(p) for p in paths]))
            if run.control.cancel_requested:
                run.emit(TrainingEvent("cancelled", step=step, total_steps=total))
                return TrainResult("cancelled", final_loss=loss_value, steps=step)
            if run.control.stop_requested:
                status = "stopped"
                break

    model.eval()
    _save_state(run, layers, optimizer, scheduler, step, epoch, batch_in_epoch)
    paths = run.export(layers, model.config.arch, base_gguf, base_dir)
    run.emit(TrainingEvent("saved", step=step, total_steps=total, paths=[str(p) for p in paths]))
    message = _usage_lines(base_gguf, paths[0]) + "\n" + _llama_cpp_result(config, model, base_gguf, paths[0],
                                                                           samples)
    # The usage lines and the check result travel once: in the done event and the result (the CLI
    # prints the result, the WebUI shows it), not also in a log event.
    run.emit(TrainingEvent("done", step=step, total_steps=total, loss=loss_value, paths=[str(p) for p in paths],
                           message=message))
    return TrainResult(status, output_files=[str(p) for p in paths], final_loss=loss_value, steps=step,
                       message=message)


def _llama_cpp_result(config: Any, model: TextModel, base_gguf: Path | None, adapter: Path,
                      samples: list[Sample]) -> str:
    """The llama.cpp check's report line, or why it did not run."""
    check = str(setting(config, "llama_cpp_check", "auto"))
    if check == "off":
        return "not checked in llama.cpp (llama_cpp_check: off)"
    if base_gguf is None:
        return "not checked in llama.cpp (the base is an HF folder; convert it to GGUF to run the adapter there)"
    from .llama_check import check_adapter_in_llama_cpp

    return check_adapter_in_llama_cpp(model, base_gguf, adapter, samples[:3],
                                      float(setting(config, "llama_cpp_tolerance", 1e-3)), required=check == "on")


def _save_state(run: _Run, layers, optimizer, scheduler, step: int, epoch: int, batch_in_epoch: int) -> None:
    save_training_state(run.state_root, step=step, epoch=epoch, batch_in_epoch=batch_in_epoch,
                        lora=lora_state(layers), optimizer=optimizer, scheduler=scheduler)


def _optimizer_step(model: TextModel, group: list[list[Sample]], params, optimizer, scheduler, pad_id: int,
                    max_norm: float, accelerator, autocast_dtype) -> float:
    """One optimizer step over micro-batches ``group``; the loss is the mean over all label tokens."""
    n_tokens = sum(sum(1 for x in s.labels[1:] if x != IGNORE) for batch in group for s in batch)
    total = 0.0
    for batch in group:
        ids, labels = collate(batch, pad_id)
        ids_t, labels_t = torch.tensor(ids), torch.tensor(labels)
        ctx = torch.autocast("cuda" if ids_t.is_cuda else "cpu", dtype=autocast_dtype) if autocast_dtype \
            else contextlib.nullcontext()
        with ctx:
            loss = model.causal_lm_loss_sum(ids_t, labels_t, ignore_index=IGNORE) / max(1, n_tokens)
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        total += float(loss.detach())
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def print_usage(result: TrainResult) -> None:
    """Print the llama.cpp lines of a finished run (for scripts calling ``train_text`` directly)."""
    print(result.message, file=sys.stdout)
