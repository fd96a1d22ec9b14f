"""LoRA Bridge: train and convert LoRA adapters for Stable Diffusion WebUIs and llama.cpp.

Imports inside this package are relative, so a WebUI may load it under another top-level name.
"""

__version__ = "0.1.0"
