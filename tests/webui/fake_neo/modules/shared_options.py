"""Mimics Forge Neo's modules/shared_options.py (sd-webui-forge-classic, neo branch): the settings categories
it registers (no ``training``) and the ``temp_dir`` option's default, ``data_path/tmp``, a folder only
Neo's shell launchers create."""

import os

from modules import paths
from modules.options import categories

categories.register_category("saving", "Saving")
categories.register_category("sd", "Stable Diffusion")
categories.register_category("ui", "User Interface")
categories.register_category("presets", "Presets")
categories.register_category("system", "System")
categories.register_category("postprocessing", "Postprocessing")
categories.register_category("svdq", "Nunchaku")


def temp_dir_default():
    """``OptionInfo(util.truncate_path(os.path.join(data_path, "tmp")), "Directory for temporary images...")``."""
    return os.path.join(paths.data_path, "tmp")
