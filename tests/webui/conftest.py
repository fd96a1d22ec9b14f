"""Fixtures of the WebUI/tab tests: a fake WebUI ``modules`` API, a tiny base, a tiny LoRA, a dataset,
and a fake training runner that emits the engine's events (the real engine runs in the browser test)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAKE_WEBUI = HERE / "fake_webui"
FAKE_FORGE = HERE / "fake_forge"
FAKE_NAMES = ("modules", "network", "networks", "backend")


def _purge_fake() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_NAMES:
            del sys.modules[name]


@pytest.fixture
def fake_webui(tmp_path, monkeypatch):
    """The stand-in WebUI API on sys.path, fresh for each test, paths under tmp_path."""
    _purge_fake()
    monkeypatch.syspath_prepend(str(FAKE_WEBUI))
    from modules import paths, sd_models, shared

    paths.models_path = str(tmp_path / "models")
    paths.data_path = str(tmp_path)
    sd_models.model_path = str(tmp_path / "models" / "Stable-diffusion")
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    shared.cmd_opts.lora_dir = None
    yield sys.modules["modules"]
    _purge_fake()


@pytest.fixture
def fake_forge(fake_webui, monkeypatch):
    """``fake_webui`` as Forge: names in the checkpoint dropdown, ``backend.memory_management`` present."""
    from modules import sd_models

    monkeypatch.syspath_prepend(str(FAKE_FORGE))
    sd_models.FLAVOR = "forge"
    yield fake_webui


@pytest.fixture(params=["a1111", "forge"])
def any_webui(request):
    """Each test runs once against the A1111 fake and once against the Forge fake."""
    return request.getfixturevalue("fake_webui" if request.param == "a1111" else "fake_forge")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny SD1 single-file checkpoint (WebUI layout)."""
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint

    folder = tmp_path_factory.mktemp("base")
    return save_tiny_sd_checkpoint("sd1", folder / "tiny-sd1.safetensors")


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory) -> Path:
    """A kohya-layout LoRA (written directly, the way sd-scripts names keys) on 4 UNet attention layers."""
    import torch
    from safetensors.numpy import save_file

    from extension.tiny.sd import build_tiny_sd

    unet = build_tiny_sd("sd1")["unet"]
    shapes = {n: tuple(m.weight.shape) for n, m in unet.named_modules()
              if isinstance(m, torch.nn.Linear) and n.endswith(("to_q", "to_k", "to_v"))}
    rng = np.random.default_rng(0)
    tensors = {}
    for name in sorted(shapes)[:4]:
        out_dim, in_dim = shapes[name]
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = rng.standard_normal((2, in_dim)).astype(np.float16)
        tensors[f"{key}.lora_up.weight"] = rng.standard_normal((out_dim, 2)).astype(np.float16)
        tensors[f"{key}.alpha"] = np.array(2.0, dtype=np.float16)
    out = tmp_path_factory.mktemp("lora") / "tiny_lora.safetensors"
    save_file(tensors, str(out), metadata={"ss_network_dim": "2", "ss_network_alpha": "2.0",
                                             "ss_base_model_version": "sd_v1"})
    return out


def _write_dataset(root: Path, captioned: int) -> Path:
    from PIL import Image

    folder = root / "2_cat"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        if i < captioned:
            (folder / f"img{i}.txt").write_text(f"a cat number {i}\n")
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """Three small captioned PNGs in a kohya repeat folder (a clean dataset: training starts)."""
    return _write_dataset(tmp_path_factory.mktemp("data"), captioned=3)


@pytest.fixture(scope="session")
def uncaptioned_dataset(tmp_path_factory) -> Path:
    """The same, with img2.png left without a caption (lint, captioners, bad_data)."""
    return _write_dataset(tmp_path_factory.mktemp("data_missing"), captioned=2)


def make_fake_runner(lora_file: Path, steps: int = 6, delay: float = 0.05, fail: bool = False):
    """A runner with the engine's signature: step events, one sample, the final save, done.

    Like ``runner.run_training`` it runs the engine inside ``RunFolder`` (lock, tidy after failure or cancel).
    """
    from extension.training.run_folder import RunFolder

    def run(cfg, callback, control):
        with RunFolder(cfg.output_dir, cfg.logging_dir) as folder:
            result = fake_engine(cfg, callback, control)
            folder.keep = result.status not in ("failed", "cancelled")
        return result

    def fake_engine(cfg, callback, control):
        from extension.training.events import TrainingEvent, TrainResult

        out_dir = Path(cfg.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        total = cfg.max_train_steps or steps
        callback(TrainingEvent("start", total_steps=total, message="fake start"))
        for step in range(1, total + 1):
            if fail and step == 2:
                raise RuntimeError("boom at step 2")
            if control.cancel_requested:
                return TrainResult("cancelled", steps=step - 1, message="cancelled")
            time.sleep(delay)
            callback(TrainingEvent("step", step=step, total_steps=total, loss=1.0 / step, lr=1e-4,
                                   eta_seconds=(total - step) * delay, it_per_second=1 / delay))
            if step == 2:
                from PIL import Image

                sample = out_dir / "samples" / "s-000002.png"
                sample.parent.mkdir(exist_ok=True)
                Image.new("RGB", (16, 16), "red").save(sample)
                callback(TrainingEvent("sample", step=step, total_steps=total, paths=[str(sample)]))
            if control.stop_requested:
                break
        final = out_dir / f"{cfg.output_name}.safetensors"
        final.write_bytes(lora_file.read_bytes())
        callback(TrainingEvent("saved", step=step, total_steps=total, paths=[str(final)]))
        callback(TrainingEvent("done", step=step, total_steps=total, message="fake done"))
        status = "stopped" if control.stop_requested else "done"
        return TrainResult(status, output_files=[str(final)], final_loss=1.0 / step, steps=step, message=status)

    return run


@pytest.fixture
def fake_runner(tiny_lora):
    return make_fake_runner(tiny_lora)


@pytest.fixture
def runner_factory(tiny_lora):
    """make_fake_runner bound to the tiny LoRA: ``runner_factory(steps=..., delay=..., fail=...)``."""
    return lambda **kw: make_fake_runner(tiny_lora, **kw)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny LLaMA GGUF base (Q8_0), built in code."""
    from extension.tiny.llama import build_tiny_llama, tiny_vocab, write_tiny_gguf

    vocab = tiny_vocab()
    model = build_tiny_llama(vocab=vocab)
    return write_tiny_gguf(model, tmp_path_factory.mktemp("llm") / "tiny-q8_0.gguf", qtype="Q8_0", vocab=vocab)


@pytest.fixture(scope="session")
def text_adapters(tmp_path_factory, tiny_gguf) -> tuple[Path, Path]:
    """(GGUF adapter, PEFT folder) from a real 2-step text run on ``tiny_gguf``."""
    from extension.config import config_from_dict
    from extension.runner import run_training

    root = tmp_path_factory.mktemp("text_run")
    (root / "t.txt").write_text("hello world\n" * 20)
    cfg = config_from_dict({"task_type": "text-generation", "base_model": str(tiny_gguf), "output_name": "tl",
                            "train_data_dir": str(root / "t.txt"), "output_dir": str(root / "run"),
                            "max_train_steps": 2, "llama_cpp_check": "off"})
    result = run_training(cfg)
    gguf = next(Path(p) for p in result.output_files if p.endswith(".gguf"))
    peft = next(Path(p) for p in result.output_files if Path(p).is_dir())
    return gguf, peft
