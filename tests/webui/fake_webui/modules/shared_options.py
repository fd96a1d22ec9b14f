"""Mimics modules/shared_options.py of A1111 1.10.1 (Forge registers the same): the settings categories."""

from modules.options import categories

categories.register_category("saving", "Saving images")
categories.register_category("sd", "Stable Diffusion")
categories.register_category("ui", "User Interface")
categories.register_category("system", "System")
categories.register_category("postprocessing", "Postprocessing")
categories.register_category("training", "Training")
