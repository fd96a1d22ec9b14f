"""Mimics the model-list part of Forge Neo's modules_forge/main_entry.py (sd-webui-forge-classic, neo, 3df257ae),
which differs from Forge's (../../fake_forge/modules_forge/main_entry.py): ``refresh_models()`` walks models/VAE,
models/text_encoder and every folder of the repeatable ``--vae-dirs`` / ``--text-encoder-dirs`` flags
(``cmd_opts.vae_dirs`` / ``text_encoder_dirs``, lists; Neo has no singular ``--vae-dir``), takes files ending in
ckpt, pt, pth, bin, safetensors, **sft** or gguf (``.sft`` is the name BFL first released ``ae`` and
``flux1-dev`` under), a later file of the same name winning, and returns the sorted names. The checkpoint list
goes through fake_webui's ``shared.refresh_checkpoints`` / ``sd_models.checkpoint_tiles`` (Neo:
``shared_items``). The gradio parts are left out."""

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
    file_extensions = ("ckpt", "pt", "pth", "bin", "safetensors", "sft", "gguf")
    module_list.clear()
    module_paths = {os.path.abspath(os.path.join(paths.models_path, "VAE")),
                    os.path.abspath(os.path.join(paths.models_path, "text_encoder")),
                    *shared.cmd_opts.vae_dirs, *shared.cmd_opts.text_encoder_dirs}
    for vae_path in module_paths:
        module_list.update(find_files_with_extensions(vae_path, file_extensions))
    return sorted(ckpt_list), sorted(module_list.keys())
