"""Fixtures for the LLM adapter formats: tiny llama/qwen2 bases (HF + GGUF) and real PEFT adapters.

Everything is built once per session in a temp dir, seeded, offline.

llama.cpp's own converter (``convert_lora_to_gguf.py``) is found through the environment variable
``LORA_BRIDGE_LLAMA_CPP``: the llama-cpp-python sdist (``.tar.gz``), its unpacked root, or its
``vendor/llama.cpp`` folder. Tests that need it are skipped when it is not set or not found.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
IDS = [1, 259, 260, 261, 50, 100, 7, 300]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# PEFT LoraConfig kwargs per adapter kind.
KINDS = {
    "uniform": {"r": 4, "lora_alpha": 8},
    "patterns": {"r": 4, "lora_alpha": 8, "rank_pattern": {"k_proj": 2, "down_proj": 6},
                 "alpha_pattern": {"v_proj": 3, "layers.1.mlp.up_proj": 16}},
    "rslora": {"r": 8, "lora_alpha": 4, "use_rslora": True},
    "embed": {"r": 4, "lora_alpha": 4, "extra_targets": ["lm_head", "embed_tokens"]},
}


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("formats_llm")


@pytest.fixture(scope="session")
def llama_files(llm_dir) -> dict[str, Path]:
    """Tiny llama (GQA 4/2): HF folder, F32 and Q8_0 GGUF."""
    from extension.tiny.llama import tiny_llama_files

    return tiny_llama_files(llm_dir / "llama", arch="llama", qtypes=("F32", "Q8_0"))


@pytest.fixture(scope="session")
def qwen2_files(llm_dir) -> dict[str, Path]:
    """Tiny qwen2: HF folder and F32 GGUF (same shapes as the llama one, no Q/K permutation)."""
    from extension.tiny.llama import tiny_llama_files

    return tiny_llama_files(llm_dir / "qwen2", arch="qwen2", qtypes=("F32",))


def _peft_model(arch: str, kind: str, hf_folder: Path):
    """A PEFT model over the tiny base with random non-zero A and B (seeded)."""
    import peft
    import torch

    from extension.tiny.llama import build_tiny_llama

    settings = dict(KINDS[kind])
    targets = TARGETS + settings.pop("extra_targets", [])
    model = build_tiny_llama(seed=0, arch=arch)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(target_modules=targets, **settings))
    # What a user's adapter records: the local base it was trained on (gives arch and head counts).
    peft_model.peft_config["default"].base_model_name_or_path = str(hf_folder)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{arch}-{kind}".encode()))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return peft_model.eval()


@pytest.fixture(scope="session")
def peft_adapters(llm_dir, llama_files, qwen2_files):
    """make(kind, arch="llama") -> (PEFT folder, PEFT model); built once per (kind, arch)."""
    cache: dict[tuple[str, str], tuple[Path, object]] = {}

    def make(kind: str, arch: str = "llama"):
        if (kind, arch) not in cache:
            hf = (llama_files if arch == "llama" else qwen2_files)["hf"]
            model = _peft_model(arch, kind, hf)
            folder = llm_dir / f"peft-{arch}-{kind}"
            model.save_pretrained(folder, save_embedding_layers=False)
            cache[(kind, arch)] = (folder, model)
        return cache[(kind, arch)]

    return make


def peft_logits(peft_model, scale: float = 1.0, adapter: bool = True) -> np.ndarray:
    """transformers + PEFT logits on IDS, the LoRA scaled by ``scale`` (or disabled)."""
    import torch

    scaled = []
    for module in peft_model.modules():
        if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:
            scaled.append((module, module.scaling["default"]))
            module.scaling["default"] = module.scaling["default"] * scale
    try:
        with torch.no_grad():
            if adapter:
                return peft_model(torch.tensor([IDS])).logits[0].float().numpy()
            with peft_model.disable_adapter():
                return peft_model(torch.tensor([IDS])).logits[0].float().numpy()
    finally:
        for module, value in scaled:
            module.scaling["default"] = value


def run_llama(model: Path, tmp: Path, lora: Path | None = None, scale: float = 1.0) -> np.ndarray:
    """llama.cpp logits on IDS, in a subprocess (a bad adapter may segfault llama-cpp-python)."""
    out = tmp / f"logits-{os.getpid()}-{len(list(tmp.glob('logits-*')))}.npy"
    cmd = [sys.executable, str(HERE / "llama_run.py"), str(model), str(out), ",".join(map(str, IDS))]
    if lora is not None:
        cmd += [str(lora), str(scale)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"llama.cpp failed ({done.returncode}): {done.stderr[-2000:]}"
    return np.load(out)


@pytest.fixture(scope="session")
def llama_cpp_src(tmp_path_factory) -> Path:
    """The vendor/llama.cpp folder holding convert_lora_to_gguf.py, or skip."""
    where = os.environ.get("LORA_BRIDGE_LLAMA_CPP")
    if not where:
        pytest.skip("set LORA_BRIDGE_LLAMA_CPP to the llama-cpp-python sdist to compare with llama.cpp's converter")
    return find_llama_cpp_src(Path(where), tmp_path_factory.mktemp("llama_cpp_src"))


def find_llama_cpp_src(where: Path, scratch: Path) -> Path:
    """Resolve an sdist tarball / unpacked sdist / vendor/llama.cpp folder to the folder with the converter."""
    if where.is_file() and where.name.endswith(".tar.gz"):
        with tarfile.open(where) as tar:
            members = [m for m in tar.getmembers()
                       if "/vendor/llama.cpp/" in m.name and (m.name.endswith(".py") or "/gguf-py/" in m.name)]
            tar.extractall(scratch, members=members)  # noqa: S202 - our own sdist
        where = next(scratch.glob("*/vendor/llama.cpp"))
    for candidate in (where, where / "vendor" / "llama.cpp"):
        if (candidate / "convert_lora_to_gguf.py").exists():
            return candidate
    pytest.skip(f"no convert_lora_to_gguf.py under {where}")
