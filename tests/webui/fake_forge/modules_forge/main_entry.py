"""Mimics the model-list part of Forge's modules_forge/main_entry.py (main, dfdcbab6; Forge Neo's 3df257ae
keeps the same names): ``module_list`` ({file name: full path}) is what the top bar's "VAE / Text Encoder"
box offers, filled by ``refresh_models()`` from models/VAE, models/text_encoder and the --vae-dir /
--text-encoder-dir folders (walked recursively, files ending in ckpt/pt/bin/safetensors/gguf; a later
file of the same name wins). The selection is ``shared.opts.forge_additional_modules`` (full paths),
registered by modules_forge/shared_options.py with default ``[]``. The gradio parts are left out."""

import os

from modules import paths, sd_models, shared

module_list = {}


def find_files_with_extensions(base_path, extensions):
    found_files = {}
    for root, _, files in os.walk(base_path):
        for file in files:
            if any(file.endswith(ext) for ext in extensions):
                found_files[file] = os.path.join(root, file)
    return found_files


def refresh_models():
    shared.refresh_checkpoints()
    ckpt_list = sd_models.checkpoint_tiles()
    module_list.clear()
    module_paths = [os.path.abspath(os.path.join(paths.models_path, "VAE")),
                    os.path.abspath(os.path.join(paths.models_path, "text_encoder"))]
    for flag in ("vae_dir", "text_encoder_dir"):  # Forge's cmd_opts always has both (None by default)
        if isinstance(getattr(shared.cmd_opts, flag, None), str):
            module_paths.append(os.path.abspath(getattr(shared.cmd_opts, flag)))
    for vae_path in module_paths:
        module_list.update(find_files_with_extensions(vae_path, ["ckpt", "pt", "bin", "safetensors", "gguf"]))
    return ckpt_list, module_list.keys()
