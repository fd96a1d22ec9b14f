"""Every device-dependent path of the text engine chooses by device, checked on a machine without a GPU.

How CUDA is stood in for, per check:
- choosing functions take a device and are given ``torch.device("cuda")`` objects (torch builds
  them without a GPU);
- ``quant._native_for`` takes a tensor, so it gets a stand-in object whose ``.device`` is CUDA;
- the heap functions get a recording fake of glibc (monkeypatched ``heap._LIBC``);
- that the torch code keeps every temporary on its input's device is run on the ``meta`` device:
  a temporary made on the CPU (the bug a CUDA run would hit) raises there as it would on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from extension.text import engine, lm_loss, native, quant
from extension.text.gguf_model import load_text_model
from extension.text.lora import inject_lora
from extension.training import heap

Q = GGMLQuantizationType
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def fake_native(monkeypatch):
    """A stand-in compiled library; ``calls`` counts how often it was asked for."""

    class Lib:
        calls = 0

    lib = Lib()

    def provide(reference=None):
        lib.calls += 1
        return lib

    monkeypatch.setattr(native, "native_dequantizer", provide)
    return lib


def test_native_library_only_for_cpu_memory(fake_native):
    reference = quant.torch_dequantize_rows
    assert native.native_for(CUDA, reference) is None
    assert native.native_for("cuda:1", reference) is None
    assert fake_native.calls == 0  # never even built for a GPU run
    assert native.native_for(CPU, reference) is fake_native
    assert native.native_for("cpu", reference) is fake_native


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0, Q.Q4_K, Q.Q6_K])
def test_dequant_backend_by_device(fake_native, qtype):
    assert quant.dequant_backend(qtype, CUDA) == "torch"
    assert quant.dequant_backend(qtype, CPU) == "native"


def test_dequant_backend_without_native_and_for_rare_types(monkeypatch):
    monkeypatch.setattr(native, "native_dequantizer", lambda reference=None: None)
    assert quant.dequant_backend(Q.Q4_0, CPU) == "torch"
    assert quant.dequant_backend(Q.F16, CUDA) == "torch"
    assert quant.dequant_backend(Q.Q5_K, CUDA) == "numpy"  # gguf-py, through host memory and back


class _CudaBlocks:
    """Stands in for packed uint8 blocks held on a GPU (what ``_native_for`` looks at)."""

    dtype = torch.uint8
    device = CUDA

    def is_contiguous(self) -> bool:
        return True


def test_native_never_handed_gpu_blocks(fake_native):
    assert quant._native_for(Q.Q4_0, _CudaBlocks()) is None
    assert fake_native.calls == 0
    cpu_blocks = torch.zeros(2, 18, dtype=torch.uint8)
    assert quant._native_for(Q.Q4_0, cpu_blocks) is fake_native


def test_matmul_chunking_by_device():
    cpu_chunk, cpu_whole = quant.matmul_chunking(CPU)
    gpu_chunk, gpu_whole = quant.matmul_chunking(CUDA)
    assert (cpu_chunk, cpu_whole) == (quant._CHUNK_ELEMENTS, quant._WHOLE_ELEMENTS)
    assert (gpu_chunk, gpu_whole) == (quant._CUDA_CHUNK_ELEMENTS, quant._CUDA_WHOLE_ELEMENTS)
    assert min(gpu_whole, cpu_whole) >= 4096 * 11008  # every 7B projection dequantized whole on both


def test_loss_slices_by_device():
    assert lm_loss.slice_budget(CPU) == (lm_loss._SLICE_WEIGHTS, lm_loss._SLICE_LOGITS)
    cpu_rows = lm_loss._slice_rows(32000, 4096, 256, CPU)
    gpu_rows = lm_loss._slice_rows(32000, 4096, 256, CUDA)
    assert cpu_rows == 4096  # 8 slices: with 256-row ones the CPU loss took 3.7x its matmuls at 7B
    assert -(-32000 // gpu_rows) <= 4  # a LLaMA output layer in a few slices, not 125 host syncs


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def mallopt(self, *args) -> int:
        self.calls.append("mallopt")
        return 1

    def malloc_trim(self, *args) -> int:
        self.calls.append("malloc_trim")
        return 1


def test_heap_tuning_only_for_cpu_training(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", libc)
    assert not heap.heap_tuning_applies(CUDA) and not heap.heap_tuning_applies("cuda:0")
    assert heap.tune_heap_for_training(CUDA) is False
    heap.keep_activations_in_heap(1 << 20, CUDA)
    heap.release_free_heap(CUDA)
    heap.restore_heap_after_training(CUDA)
    assert libc.calls == []
    assert heap.heap_tuning_applies(CPU) and heap.heap_tuning_applies("cpu")
    assert heap.tune_heap_for_training(CPU) is True
    heap.release_free_heap(CPU)
    assert libc.calls == ["mallopt", "mallopt", "malloc_trim"]
    monkeypatch.setattr(heap, "_LIBC", None)  # not glibc: nothing applies anywhere
    assert not heap.heap_tuning_applies(CPU)


def test_training_device_and_precision():
    assert engine.training_device(cuda_available=True) == CUDA
    assert engine.training_device(cuda_available=False) == CPU
    assert engine.training_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert engine.mixed_precision_for("fp16", CUDA) == "fp16"
    assert engine.mixed_precision_for("fp16", CPU) == "bf16"  # CPU autocast has no fp16
    assert engine.mixed_precision_for("bf16", CPU) == "bf16"
    assert engine.mixed_precision_for("no", CUDA) == "no"


def test_scratch_space_is_per_device():
    quant.release_buffers()
    on_cpu = quant.scratch("t", (2, 3), torch.float32)
    on_meta = quant.scratch("t", (2, 3), torch.float32, "meta")
    assert on_cpu.device == CPU and on_meta.device.type == "meta"
    assert quant.scratch("t", (2, 3), torch.float32).data_ptr() == on_cpu.data_ptr()  # reused, not replaced
    quant.release_buffers()


@pytest.mark.parametrize("qtype", [q for q in quant.TORCH_TYPES if q != Q.F32])
def test_torch_dequantization_stays_on_the_blocks_device(qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    raw = torch.empty(6, 2 * size, dtype=torch.uint8, device="meta")
    assert quant.dequantize_rows(raw, qtype, 2 * block).device.type == "meta"
    out = torch.empty(6, 2 * block, device="meta")
    assert quant.dequantize_into(raw, qtype, 2 * block, out) is out


def test_text_model_forward_and_backward_stay_on_the_model_device(tiny):
    model = load_text_model(tiny["Q4_0"])
    layers = inject_lora(model, ["q_proj", "v_proj", "down_proj"], 4, 4.0)
    model.to("meta").train()
    ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
    model(ids).sum().backward()
    grad = next(iter(layers.values())).lora_A.grad
    assert grad is not None and grad.device.type == "meta"
