"""Mimics Forge Neo's modules/ui_tempdir.py: ``save_pil_to_file`` saves a PIL image gradio is handed into
``shared.opts.temp_dir`` without creating it (``tempfile.NamedTemporaryFile(dir=...)``), and
``install_ui_tempdir_override`` makes gradio 4 use it for every PIL image (``save_pil_to_cache``), as
Neo's modules/gradio_extensions.py does at import."""

import os
import tempfile

from modules import shared
from PIL import PngImagePlugin


def save_pil_to_file(pil_image, cache_dir=None, format="png"):
    already_saved_as = getattr(pil_image, "already_saved_as", None)
    if already_saved_as and os.path.isfile(already_saved_as):
        return f"{already_saved_as}?{os.path.getmtime(already_saved_as)}"

    if shared.opts.temp_dir:
        dir = shared.opts.temp_dir
    else:
        dir = cache_dir
        os.makedirs(dir, exist_ok=True)

    metadata = PngImagePlugin.PngInfo()
    use_metadata = False
    for key, value in pil_image.info.items():
        if isinstance(key, str) and isinstance(value, str):
            metadata.add_text(key, value)
            use_metadata = True

    with tempfile.NamedTemporaryFile(delete=False, suffix=".png", dir=dir) as file_obj:
        pil_image.save(file_obj, pnginfo=(metadata if use_metadata else None))
    return file_obj.name


def install_ui_tempdir_override():
    import gradio.processing_utils

    gradio.processing_utils.save_pil_to_cache = save_pil_to_file
