"""Image LoRA training on SD1/SD2/SDXL bases, exported as kohya files for the WebUIs.

Modules: ``engine`` (``train_image``), ``data`` (lazily decoded items), ``conditioning`` (text-encoder
and VAE front ends with their caches), ``noise`` (noise, timesteps, loss), ``lora`` (PEFT layers and
export), ``init_lora`` (the UNet/text-encoder layout), ``metadata`` (kohya ``ss_*``), ``outputs``
(saved files, keep-last-N), ``samples`` (sample images). Heavy imports happen inside these modules.
"""
