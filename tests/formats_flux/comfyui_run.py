"""Real ComfyUI (a checkout, not copied here) loads Flux LoRA files the way its LoraLoader node does.

Run as a script in its own process, so ComfyUI's global state stays out of the test process:
``python comfyui_run.py JOB.json``. JOB holds ``comfyui`` (checkout), ``transformer`` (a BFL single-file
Flux), ``axes_dim`` (rope axes: not in the weights), optional ``clip_l``/``t5xxl`` state files with
``clip_l_config``/``t5xxl_config`` (tiny configs, passed through ComfyUI's own ``<name>_model_config`` model
option), ``loras`` and ``out``. For each LoRA it writes ``out/<stem>.npz`` = {weight key: patched - original}
for every weight ComfyUI changed once ``load_models_gpu`` / ``CLIP.load_model`` (what sampling and text
encoding call) loaded the LoRA's clones, and ``out/<stem>.json`` = the keys ComfyUI logged as not loaded; plus
``out/key_map.json`` (ComfyUI's LoRA key map of that model) and ``out/model.json`` (how the base loaded). With
``forward`` (an npz of x, timestep, context, y, guidance) also ``out/base.forward.npy`` and
``out/<stem>.forward.npy``: the Flux model's output without and with each LoRA.

What is not ComfyUI's own, and why it does not touch LoRA mapping or patching:
- ``detect_unet_config`` hard-codes Flux.1's full widths (hidden 3072, 24 heads, context 4096, rope axes
  16/56/56); its result is kept (model type, depths, guidance, patch size, vec_in_dim) and only those widths
  are read from the tiny file's shapes (and ``axes_dim`` from JOB). The LoRA key map then reads them back
  from this config exactly as it would read the real ones.
- ``torchvision``/``torchaudio``, when not installed, are empty placeholder modules: ``comfy.sd`` imports
  them for Stable Cascade's and Cosmos' image transforms and the audio encoders, never for Flux or LoRAs
  (anything used from them raises).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import types
from pathlib import Path

PLACEHOLDERS = ("torchvision", "torchaudio")
COMFYUI = os.environ.get("LORA_BRIDGE_COMFYUI", "")
SKIP_REASON = ("real ComfyUI not given: set LORA_BRIDGE_COMFYUI to a ComfyUI checkout (it is not on PyPI) to run "
               "it on our Flux LoRA files")


def run_comfyui(folder: Path, transformer: Path, loras: list, axes_dim: list[int], **encoders) -> Path:
    """Test side: run this script on ``loras`` in its own process (ComfyUI at ``LORA_BRIDGE_COMFYUI``);
    ``folder`` then holds its outputs (module doc)."""
    import subprocess

    job = dict(comfyui=COMFYUI, transformer=str(transformer), axes_dim=list(axes_dim),
               loras=[str(p) for p in loras], out=str(folder), **encoders)
    (folder / "job.json").write_text(json.dumps(job))
    done = subprocess.run([sys.executable, __file__, str(folder / "job.json")], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


class _Placeholder(types.ModuleType):
    """A module of a package that is not installed: every attribute is a callable that raises."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(f"{self.__name__}.{name}")


class _Missing:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, name: str):
        return _Missing(f"{self._name}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is not installed (placeholder for ComfyUI's imports)")

    def __mro_entries__(self, bases):
        return (object,)


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Placeholder(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_comfyui(checkout: str) -> list[str]:
    """Import ComfyUI from ``checkout`` as ``main.py --cpu --fp32-unet --fp32-text-enc`` sets it up; the
    placeholder modules used."""
    missing = {name for name in PLACEHOLDERS if importlib.util.find_spec(name) is None}
    sys.meta_path.append(_PlaceholderFinder(missing))
    sys.path.insert(0, checkout)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [str(Path(checkout) / "main.py"), "--cpu", "--fp32-unet", "--fp32-text-enc"]
    import comfy.cli_args  # noqa: F401  (parses the arguments above)
    return sorted(missing)


def _tiny_widths(detect, axes_dim: list[int]):
    """``detect_unet_config`` with Flux's hard-coded full widths replaced by the file's (see module doc)."""

    def detect_unet_config(state_dict, key_prefix, metadata=None):
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config is None or config.get("image_model") != "flux":
            return config
        p, patch = key_prefix, config["patch_size"]
        hidden = state_dict[f"{p}img_in.weight"].shape[0]
        config.update(hidden_size=hidden, context_in_dim=state_dict[f"{p}txt_in.weight"].shape[1],
                      num_heads=hidden // state_dict[f"{p}double_blocks.0.img_attn.norm.query_norm.scale"].shape[0],
                      mlp_ratio=state_dict[f"{p}double_blocks.0.img_mlp.0.weight"].shape[0] / hidden,
                      out_channels=state_dict[f"{p}final_layer.linear.weight"].shape[0] // (patch * patch),
                      axes_dim=list(axes_dim))
        return config

    return detect_unet_config


def _target(value):
    """A key-map value as JSON: the weight key, or [key, [dim, offset, size] or None, function name]."""
    if isinstance(value, str):
        return value
    key, rows, *function = value
    return [key, list(rows) if rows is not None else None] + [f.__name__ for f in function]


class _Log(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _forward(patcher, inputs: dict):
    """ComfyUI's Flux ``diffusion_model`` output (``b c h w``) on ``inputs``' x/timestep/context/y/guidance."""
    import torch

    with torch.no_grad():
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
        return patcher.model.diffusion_model(tensors.pop("x"), tensors.pop("timestep"), tensors.pop("context"),
                                             **tensors).numpy()


def run(job: dict) -> None:
    """Load the base, then every LoRA of ``job`` as LoraLoader does; write what ComfyUI did (module doc)."""
    placeholders = import_comfyui(job["comfyui"])
    import comfy.lora
    import comfy.model_detection
    import comfy.model_management
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    import comfy.utils
    import numpy as np

    log = _Log()
    logging.getLogger().addHandler(log)
    out = Path(job["out"])
    comfy.model_detection.detect_unet_config = _tiny_widths(comfy.model_detection.detect_unet_config,
                                                            job["axes_dim"])
    model = comfy.sd.load_diffusion_model_state_dict(comfy.utils.load_torch_file(job["transformer"], safe_load=True))
    info = {"model_class": type(model.model).__module__ + "." + type(model.model).__name__,
            "diffusion_model": type(model.model.diffusion_model).__module__ + "."
            + type(model.model.diffusion_model).__name__,
            "unet_config": {k: v for k, v in model.model.model_config.unet_config.items() if k != "dtype"},
            "dtype": str(model.model.get_dtype()), "load_log": list(log.messages), "placeholders": placeholders}
    clip = None
    if job.get("clip_l"):
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                        comfy.text_encoders.flux.flux_clip())
        clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": job["clip_l_config"],
                                                    "t5xxl_model_config": job["t5xxl_config"]})
        info["clip_load"] = [list(map(sorted, clip.load_sd(comfy.utils.load_torch_file(job[part], safe_load=True))))
                             for part in ("clip_l", "t5xxl")]
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    info["shapes"] = {k: list(v.shape) for part in (model.model, clip.cond_stage_model if clip else None)
                      if part is not None for k, v in part.state_dict().items()}
    (out / "key_map.json").write_text(json.dumps({k: _target(v) for k, v in key_map.items()}, indent=0))
    (out / "model.json").write_text(json.dumps(info, indent=1, default=str))
    inputs = dict(np.load(job["forward"])) if job.get("forward") else None
    if inputs:
        np.save(out / "base.forward.npy", _forward(model, inputs))
    for path in job["loras"]:
        log.messages.clear()
        before = {"model": _weights(model.model), "clip": _weights(clip.cond_stage_model) if clip else {}}
        lora = comfy.utils.load_torch_file(path, safe_load=True)
        new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
        # As sampling and text encoding load them: the clones replace the loaded base and patch its weights.
        comfy.model_management.load_models_gpu([new_model], force_full_load=True)
        patched = {"model": _weights(new_model.model)}
        if inputs:
            np.save(out / (Path(path).stem + ".forward.npy"), _forward(new_model, inputs))
        if new_clip is not None:
            new_clip.load_model()
            patched["clip"] = _weights(new_clip.cond_stage_model)
        comfy.model_management.unload_all_models()
        deltas = {}
        for part, weights in patched.items():
            for key, value in weights.items():
                delta = (value.double() - before[part][key].double()).float().numpy()
                if np.any(delta):
                    deltas[key] = delta
        np.savez(out / (Path(path).stem + ".npz"), **deltas)
        not_loaded = [m.split(": ", 1)[1] for m in log.messages if m.startswith("lora key not loaded: ")]
        (out / (Path(path).stem + ".json")).write_text(json.dumps({
            "not_loaded": not_loaded, "not_patched": [m[len("NOT LOADED "):] for m in log.messages
                                                      if m.startswith("NOT LOADED ")],
            "lora_keys": len(lora), "restored": _weights(model.model).keys() == before["model"].keys() and all(
                bool((w == before[part][k]).all()) for part, module in (("model", model.model), ("clip", clip and
                clip.cond_stage_model)) if module is not None for k, w in _weights(module).items())}))


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
