"""Text LoRA training on a GGUF, legacy GGML or HF base; output a PEFT folder and a GGUF adapter.

Flow: load the base (weights stay packed), its tokenizer, the data; wrap the target layers with
LoRA; train with the shared optimizer/scheduler/checkpoint pieces; write
``<output_dir>/<output_name>/`` (PEFT) and ``<output_dir>/<output_name>.gguf`` (llama.cpp) through
the format layer, validated against the base; optionally compare llama.cpp's logits with torch's.

A legacy GGML base is first upgraded to GGUF (llama.cpp no longer loads GGML files, so that is the
file the adapter is used with); the copy is kept and reused, see ``base_gguf.py``.

``init_lora`` starts the LoRA from an existing adapter (``init_lora.py``, on ``training/init_lora.py``).

``_Run.train`` reads as its phases: base and data, LoRA, optimizer and schedule, resume, loop, save.

Exact resume: the data order of each epoch comes from ``seed + epoch``, and the training state
(LoRA, optimizer, scheduler, RNG, position) is saved every ``save_steps`` steps and at the end,
so a killed run resumed with ``resume: auto`` ends with the same adapter, bitwise on CPU.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import torch

from .._converters import converters
from ..config import TrainConfig, as_config
from ..errors import UserError
from ..training.amp import loss_scaler, optimizer_step, unscale_gradients
from ..training.checkpoint import latest_state, load_training_state, restore_rng, save_training_state, state_root
from ..training.events import EventCallback, RunCancelled, TrainingControl, TrainingEvent, TrainResult, cancel_point
from ..training.heap import keep_activations_in_heap, restore_heap_after_training, tune_heap_for_training
from ..training.optimizers import build_optimizer
from ..training.progress import NonFiniteLoss, TensorBoardSink, Throughput, TqdmSink, check_finite, fan_out
from ..training.schedulers import build_scheduler
from .base_gguf import ggml_options, prepare_base_gguf
from .data import IGNORE, Sample, collate, load_text_dataset
from .families import TextConfig
from .gguf_model import TextModel, load_text_model, read_text_config
from .init_lora import load_text_init, text_layout
from .lora import inject_lora, load_lora_state, lora_state, to_adapter
from .memory_plan import plan_checkpointing, weight_bytes
from .tokenizer import HFTokenizer, Tokenizer

_SAVE_DTYPES = {"fp16": "f16", "bf16": "bf16", "fp32": "f32"}


def read_base(config: TrainConfig) -> tuple[Path, TextConfig, Tokenizer | HFTokenizer]:
    """(base path, its ``TextConfig``, its tokenizer) from the header alone: the weights load later."""
    base = config.base_model
    if not base:
        raise UserError("config: base_model is not set; give a .gguf, legacy GGML .bin or HF folder")
    base = Path(base)
    text_config = read_text_config(base, ggml_options(config))
    if base.is_dir():
        return base, text_config, HFTokenizer(str(base))
    return base, text_config, Tokenizer.from_metadata(text_config.tokenizer, str(base))


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).tolist()


def training_device(cuda_available: bool | None = None) -> torch.device:
    """Where a text run trains: the current CUDA device when torch has one, else the CPU.

    The base's packed blocks, the LoRA and every step tensor live there, so on CUDA the blocks are
    dequantized on the GPU (``quant.dequant_backend``). The WebUI hand-off assumes the same
    (``webui/host.py``: a text run frees VRAM exactly when torch would train on a GPU).
    """
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    return torch.device("cuda" if cuda else "cpu")


def mixed_precision_for(mp: str, device: torch.device) -> str:
    """The accelerate precision used on ``device``: fp16 autocast is GPU-only, bf16 is its CPU equivalent."""
    return "bf16" if device.type != "cuda" and mp == "fp16" else mp


def _accelerator(config: TrainConfig, device: torch.device):
    """(accelerate.Accelerator or None, autocast dtype or None) for training on ``device``."""
    mp = mixed_precision_for(str(config.mixed_precision), device)
    try:
        from accelerate import Accelerator

        acc = Accelerator(mixed_precision=mp, cpu=device.type != "cuda")
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
    """One training run's state; ``train`` is the whole run, each phase a method."""

    def __init__(self, config: TrainConfig, callback: EventCallback | None, control: TrainingControl | None) -> None:
        self.config = config
        self.control = control or TrainingControl()
        self.output_dir = Path(config.output_dir)
        self.name = str(config.output_name)
        self.emit = fan_out(callback if callback is not None else TqdmSink("text lora"),
                            TensorBoardSink.for_run(config.logging_dir, self.output_dir))
        self.state_root = state_root(config)
        self.device = training_device()
        self.loss: float | None = None

    def log(self, line: str) -> None:
        """One ``log`` event."""
        self.emit(TrainingEvent("log", message=line))

    # -- the run ----------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """The whole run: load base -> data -> inject LoRA -> optimizer -> resume -> loop -> save.

        A cancel is honoured between any two phases and inside the long ones (``cancel_point``).
        """
        for phase in (self.load_base_and_data, self.inject_lora, self.build_optimizer, self.resume, self.announce):
            cancel_point()
            phase()
        status = self.loop()
        if status == "cancelled":
            return self.cancelled()
        return self.finish(status)

    def cancelled(self) -> TrainResult:
        """The result of a cancelled run: no final adapter (step saves stay)."""
        step = getattr(self, "step", 0)
        self.emit(TrainingEvent("cancelled", step=step, total_steps=getattr(self, "total", 0)))
        return TrainResult("cancelled", final_loss=self.loss, steps=step, message="cancelled; no final adapter written")

    def load_base_and_data(self) -> None:
        """The packed base, its tokenizer, the tokenized samples, and the GGUF file llama.cpp will use."""
        config = self.config
        self.seed = int(config.seed)
        data_dir = config.train_data_dir
        if not data_dir:
            raise UserError("config: train_data_dir is not set; give a .txt or .jsonl file (or a folder of them)")
        base, text_config, tokenizer = read_base(config)
        self.samples = load_text_dataset(
            data_dir, tokenizer, data_format=str(config.data_format), max_length=int(config.max_length),
            train_on_responses_only=bool(config.train_on_responses_only), chat_template=config.chat_template,
        )
        self.pad_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        self.batch_size = int(config.batch_size)
        longest = max(len(s.ids) for s in self.samples)  # load_text_dataset refuses an empty dataset
        cancel_point()
        # Before any weight is read: checkpointing when auto, or one line when the run cannot fit.
        plan = plan_checkpointing(config, text_config, weight_bytes(base, text_config), longest, self.device, base)
        self.checkpointing = plan.checkpointing
        self.log(plan.line)
        self.model = load_text_model(base, ggml_options(config))
        keep_activations_in_heap(self.model.largest_activation_bytes(self.batch_size * longest), self.device)
        self.model.limit_kept_outputs(self.batch_size * longest)  # checkpointing's kept outputs: fixed budget
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cancel_point()
        self.base_gguf = prepare_base_gguf(config, self.output_dir, self.log)
        self.base_dir = Path(config.base_model or "") if self.base_gguf is None else None

    def inject_lora(self) -> None:
        """LoRA layers on the target modules (seeded), the init file loaded into them."""
        config, model = self.config, self.model
        torch.manual_seed(self.seed)
        rank = int(config.lora_rank)
        layout, init = text_layout(config, model, self.base_gguf or self.base_dir, self.log)
        self.layers = inject_lora(model, layout.names, rank, float(config.lora_alpha), float(config.lora_dropout),
                                  module_ranks=layout.ranks)
        if init is not None:
            load_text_init(layout, self.layers)
        model.gradient_checkpointing = self.checkpointing  # plan_checkpointing's choice
        model.to(self.device)  # packed blocks, norms and LoRA; a no-op on CPU

    def build_optimizer(self) -> None:
        """Optimizer, accelerate, run length (max_train_steps, else epochs) and the schedule over it."""
        config = self.config
        self.params = [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]
        self.optimizer = build_optimizer(self.params, config)
        self.accelerator, self.autocast_dtype = _accelerator(config, self.device)
        self.max_norm = float(config.max_grad_norm)
        self.accum = int(config.gradient_accumulation_steps)
        n_batches = math.ceil(len(self.samples) / self.batch_size)
        steps_per_epoch = math.ceil(n_batches / self.accum)
        max_steps = config.max_train_steps
        self.total = int(max_steps) if max_steps else int(config.epochs) * steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, config, self.total)

    def resume(self) -> None:
        """Position 0, or the saved state's (LoRA, optimizer, schedule, RNG, data position) with ``resume``."""
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        resume = self.config.resume
        if resume:
            path = latest_state(self.state_root) if str(resume) == "auto" else Path(resume)
            if path is not None:
                state = load_training_state(path)
                load_lora_state(self.layers, state.lora)
                self.optimizer.load_state_dict(state.optimizer)
                self.scheduler.load_state_dict(state.scheduler)
                restore_rng(state.rng)
                self.step, self.epoch, self.batch_in_epoch = state.step, state.epoch, state.batch_in_epoch

    def announce(self) -> None:
        config, model = self.config, self.model
        ranks = "/".join(str(r) for r in sorted({layer.rank for layer in self.layers.values()}))
        self.meter = Throughput(self.total)
        self.emit(TrainingEvent("start", step=self.step, total_steps=self.total, epoch=self.epoch,
                                message=f"text LoRA: {len(self.samples)} samples, {len(self.layers)} layers, "
                                        f"rank {ranks}, base {model.config.arch} ({config.base_model or ''})"))
        model.train()

    # -- the loop ---------------------------------------------------------------------------------

    def loop(self) -> str:
        """Epochs of optimizer steps from the resume position; ``done``, ``stopped`` or ``cancelled``."""
        while self.step < self.total:
            order = _epoch_order(len(self.samples), self.seed, self.epoch)
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            epoch_now = self.epoch
            while self.epoch == epoch_now and self.step < self.total:
                group = [[self.samples[i] for i in b]
                         for b in batches[self.batch_in_epoch:self.batch_in_epoch + self.accum]]
                self.loss = _optimizer_step(self.model, group, self.params, self.optimizer, self.scheduler,
                                            self.pad_id, self.max_norm, self.accelerator, self.autocast_dtype)
                self.batch_in_epoch += len(group)
                self.step += 1
                check_finite(self.loss, self.step)
                self.after_step(next_epoch=self.batch_in_epoch >= len(batches))
                if self.control.cancel_requested:
                    return "cancelled"
                if self.control.stop_requested:
                    return "stopped"
        return "done"

    def after_step(self, next_epoch: bool) -> None:
        """Report the step, move to the next epoch when this one is used up, save when due."""
        step, total = self.step, self.total
        rate, eta = self.meter.update(step)
        self.emit(TrainingEvent("step", step=step, total_steps=total, epoch=self.epoch, loss=self.loss,
                                lr=self.scheduler.get_last_lr()[0], it_per_second=rate, eta_seconds=eta))
        if next_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        save_steps = int(self.config.save_steps)
        if save_steps and step % save_steps == 0 and step < total:
            self.save_state()
            paths = self.export(suffix=f"-{step:06d}")
            self.emit(TrainingEvent("saved", step=step, total_steps=total, paths=[str(p) for p in paths]))

    # -- outputs ----------------------------------------------------------------------------------

    def save_state(self) -> None:
        """The training state at the current position (what ``resume`` continues from)."""
        save_training_state(self.state_root, step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                            lora=lora_state(self.layers), optimizer=self.optimizer, scheduler=self.scheduler)

    def export(self, suffix: str = "") -> list[Path]:
        """Write the GGUF adapter (and, for the final save, the PEFT folder); returns the paths."""
        config, base = self.config, self.base_gguf or self.base_dir
        adapter = to_adapter(self.layers, self.model.config.arch, {"lora_bridge.base_model": str(config.base_model
                                                                                                  or "")})
        out: list[Path] = []
        out.append(converters.save_adapter(adapter, self.output_dir / f"{self.name}{suffix}.gguf", to="gguf",
                                           base=base, dtype=str(config.gguf_adapter_dtype), name=self.name,
                                           force=True))
        if not suffix:
            peft_dtype = _SAVE_DTYPES.get(str(config.save_precision), "f32")
            out.append(converters.save_adapter(adapter, self.output_dir / self.name, to="peft", base=base,
                                               dtype=peft_dtype, name=self.name, force=True))
        return [Path(p) for p in out]

    def finish(self, status: str) -> TrainResult:
        """Final state and adapter, the usage lines and the llama.cpp check, the done event."""
        step, total = self.step, self.total
        self.model.eval()
        self.save_state()
        paths = self.export()
        self.emit(TrainingEvent("saved", step=step, total_steps=total, paths=[str(p) for p in paths]))
        try:
            check = _llama_cpp_result(self.config, self.model, self.base_gguf, paths[0], self.samples)
        except RunCancelled:  # the adapter is written: a cancel now only skips the check
            check = "llama.cpp check skipped: the run was cancelled"
        message = _usage_lines(self.base_gguf, paths[0]) + "\n" + check
        # The usage lines and the check result travel once: in the done event and the result (the CLI
        # prints the result, the WebUI shows it), not also in a log event.
        self.emit(TrainingEvent("done", step=step, total_steps=total, loss=self.loss, paths=[str(p) for p in paths],
                                message=message))
        return TrainResult(status, output_files=[str(p) for p in paths], final_loss=self.loss, steps=step,
                           message=message)


def train_text(config: TrainConfig | dict, callback: EventCallback | None = None,
               control: TrainingControl | None = None) -> TrainResult:
    """Train a text LoRA as ``config`` says; see the module docstring for what is written."""
    run = _Run(as_config(config), callback, control)
    tune_heap_for_training(run.device)
    try:
        with run.control.active():  # cancel_point() in loading, tokenizing and the llama.cpp check asks this
            return run.train()
    except RunCancelled:
        return run.cancelled()
    except NonFiniteLoss as exc:
        run.emit(TrainingEvent("error", message=str(exc)))
        return TrainResult("failed", message=str(exc))
    except converters.AdapterError as exc:
        run.emit(TrainingEvent("error", message=str(exc)))
        raise
    finally:
        restore_heap_after_training(run.device)  # the process may be a long-running WebUI


def _llama_cpp_result(config: TrainConfig, model: TextModel, base_gguf: Path | None, adapter: Path,
                      samples: list[Sample]) -> str:
    """The llama.cpp check's report line, or why it did not run."""
    check = str(config.llama_cpp_check)
    if check == "off":
        return "not checked in llama.cpp (llama_cpp_check: off)"
    if base_gguf is None:
        return "not checked in llama.cpp (the base is an HF folder; convert it to GGUF to run the adapter there)"
    from .llama_check import check_adapter_in_llama_cpp

    return check_adapter_in_llama_cpp(model, base_gguf, adapter, samples[:3],
                                      float(config.llama_cpp_tolerance), required=check == "on")


def _optimizer_step(model: TextModel, group: list[list[Sample]], params, optimizer, scheduler, pad_id: int,
                    max_norm: float, accelerator, autocast_dtype) -> float:
    """One optimizer step over micro-batches ``group``; the loss is the mean over all label tokens."""
    n_tokens = sum(sum(1 for x in s.labels[1:] if x != IGNORE) for batch in group for s in batch)
    total = 0.0
    for batch in group:
        cancel_point()
        ids, labels = collate(batch, pad_id)
        device = params[0].device  # the model's (training_device)
        ids_t, labels_t = torch.tensor(ids, device=device), torch.tensor(labels, device=device)
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            loss = model.causal_lm_loss_sum(ids_t, labels_t, ignore_index=IGNORE) / max(1, n_tokens)
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        total += float(loss.detach())
    scaler = loss_scaler(accelerator)  # fp16 on CUDA (training/amp.py)
    unscale_gradients(optimizer, scaler)
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer_step(optimizer, scaler)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def print_usage(result: TrainResult) -> None:
    """Print the llama.cpp lines of a finished run (for scripts calling ``train_text`` directly)."""
    print(result.message, file=sys.stdout)
