"""Fixtures of the WebUI/tab tests: a fake WebUI ``modules`` API, a tiny base, a tiny LoRA, a dataset,
and a fake training runner that emits the engine's events (the real engine runs in the browser test)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAKE_WEBUI = HERE / "fake_webui"
FAKE_FORGE = HERE / "fake_forge"
FAKE_NEO = HERE / "fake_neo"
FAKE_NAMES = ("modules", "network", "networks", "backend", "launch", "modules_forge")
# Forge Neo ships these CLIP tokenizers (diffusers layout) under backend/huggingface/.
NEO_TOKENIZERS = ("runwayml/stable-diffusion-v1-5/tokenizer", "stabilityai/stable-diffusion-xl-base-1.0/tokenizer",
                  "stabilityai/stable-diffusion-xl-base-1.0/tokenizer_2")
FORGE_FLUX_TOKENIZERS = "black-forest-labs/FLUX.1-dev"  # Forge and Neo ship it (tokenizer/, tokenizer_2/)


def _purge_fake() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_NAMES:
            del sys.modules[name]


def _write_flux_tokenizers(root: Path) -> Path:
    """backend/huggingface/black-forest-labs/FLUX.1-dev as Forge and Neo ship it: ``tokenizer/`` (CLIP BPE: vocab.json,
    merges.txt and configs) and ``tokenizer_2/`` (T5: tokenizer.json and configs, no spiece.model); here with the
    tiny Flux's vocabularies."""
    from extension.tiny.flux import t5_tokenizer
    from extension.tiny.sd import write_tokenizer_files

    flux = root / "backend" / "huggingface" / FORGE_FLUX_TOKENIZERS
    write_tokenizer_files(flux / "tokenizer")
    t5_tokenizer().save_pretrained(str(flux / "tokenizer_2"))
    return flux


def _fake_host(tmp_path, monkeypatch, overlay: Path | None = None):
    """The stand-in ``modules`` on sys.path, fresh, paths under tmp_path; ``overlay``'s modules/ files
    take the place of fake_webui's (the package's ``__path__`` lists it first)."""
    _purge_fake()
    monkeypatch.syspath_prepend(str(FAKE_WEBUI))
    if overlay is not None:
        monkeypatch.syspath_prepend(str(overlay))  # its launch.py; its modules/ has no __init__.py
        import modules

        modules.__path__.insert(0, str(overlay / "modules"))
    from modules import paths

    paths.models_path = str(tmp_path / "models")
    paths.data_path = paths.script_path = str(tmp_path)
    from modules import sd_models, shared

    sd_models.model_path = str(tmp_path / "models" / "Stable-diffusion")
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    shared.cmd_opts.lora_dir = None
    # The tests' user added tmp_path in Settings → LoRA Training (write-anywhere-below-it, like --allow-dir);
    # tests of the path policy itself set this option themselves.
    shared.opts.data["lora_bridge_extra_folders"] = str(tmp_path)
    return sys.modules["modules"]


@pytest.fixture
def fake_webui(tmp_path, monkeypatch):
    """The stand-in WebUI API (A1111 1.10) on sys.path, fresh for each test, paths under tmp_path."""
    yield _fake_host(tmp_path, monkeypatch)
    _purge_fake()


@pytest.fixture
def fake_neo(tmp_path, monkeypatch):
    """Forge Neo (see fake_neo/README.md): Forge's names and memory manager, Neo's own shared_options,
    ui_tempdir and launch_utils, its bundled tokenizer folders (here the tiny model's vocabulary), no
    BLIP (``shared.interrogator``) or DeepBooru (``modules.deepbooru``), and ``opts.temp_dir`` at its
    default ``data_path/tmp``, which does not exist (only Neo's shell launchers create it)."""
    from extension.tiny.sd import write_tokenizer_files

    monkeypatch.syspath_prepend(str(FAKE_FORGE))
    modules = _fake_host(tmp_path, monkeypatch, overlay=FAKE_NEO)
    from modules import sd_models, shared, shared_options

    sd_models.FLAVOR = "forge"
    monkeypatch.delattr(shared, "interrogator")
    monkeypatch.setitem(sys.modules, "modules.deepbooru", None)  # import fails as for a missing file
    shared.opts.data["temp_dir"] = shared_options.temp_dir_default()
    # Neo's modules/cmd_args.py: the model-folder flags are repeatable lists (no --ckpt-dir / --vae-dir there)
    shared.cmd_opts.ckpt_dirs, shared.cmd_opts.lora_dirs = [], []
    monkeypatch.delattr(shared.cmd_opts, "ckpt_dir")
    shared.cmd_opts.vae_dirs, shared.cmd_opts.text_encoder_dirs = [], []
    _write_flux_tokenizers(tmp_path)
    for rel in NEO_TOKENIZERS:
        folder = write_tokenizer_files(tmp_path / "backend" / "huggingface" / rel)
        pad = "!" if rel.endswith("_2") else "<|endoftext|>"
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
             "unk_token": "<|endoftext|>", "pad_token": pad, "tokenizer_class": "CLIPTokenizer"}))
        (folder / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": pad}))
    yield modules
    _purge_fake()


@pytest.fixture
def fake_forge(fake_webui, monkeypatch, tmp_path):
    """``fake_webui`` as Forge: names in the checkpoint dropdown, ``backend.memory_management`` present, and
    the Flux.1 tokenizers Forge ships in backend/huggingface/black-forest-labs/FLUX.1-dev/ (``tokenizer/``
    CLIP, ``tokenizer_2/`` T5; here the tiny Flux's vocabularies)."""
    from modules import sd_models

    monkeypatch.syspath_prepend(str(FAKE_FORGE))
    sd_models.FLAVOR = "forge"
    _write_flux_tokenizers(tmp_path)
    yield fake_webui


@pytest.fixture(params=["a1111", "forge", "neo"])
def any_webui(request):
    """Each test runs against the A1111, the Forge and the Forge Neo fake."""
    return request.getfixturevalue({"a1111": "fake_webui", "forge": "fake_forge", "neo": "fake_neo"}[request.param])


@pytest.fixture(scope="session")
def bare_base(tmp_path_factory) -> Path:
    """A tiny SD1 single-file checkpoint (WebUI layout) with no tokenizer beside it."""
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint

    folder = tmp_path_factory.mktemp("bare")
    return save_tiny_sd_checkpoint("sd1", folder / "tiny-sd1.safetensors")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny SD1 single-file checkpoint (WebUI layout) with its tokenizer beside it (``<stem>.tokenizer/``)."""
    from extension.tiny.sd import write_tokenizer_files
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint

    folder = tmp_path_factory.mktemp("base")
    write_tokenizer_files(folder / "tiny-sd1.tokenizer")
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
