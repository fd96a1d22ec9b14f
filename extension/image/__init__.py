"""Image LoRA training on SD1/SD2/SDXL bases, exported as kohya files for the WebUIs.

Modules: ``engine`` (``train_image``), ``data`` (lazily decoded items), ``conditioning`` (text-encoder
and VAE front ends with their caches), ``noise`` (noise, timesteps, loss), ``lora`` (PEFT layers and
export), ``init_lora`` (the UNet/text-encoder layout), ``metadata`` (kohya ``ss_*``), ``outputs``
(saved files, keep-last-N), ``samples`` (sample images); the memory levers of #14: ``memory`` (which
parts load when, encoders released once cached), ``frozen_weights`` (frozen UNet stored in fp16/bf16,
computed in fp32 or bf16), ``lazy_checkpoint`` (single files read tensor by tensor into the models).
Heavy imports happen inside these modules.
"""
