"""The Flux.1 family of the image engine: one module per job beside the SD ones it reuses.

``engine`` (``train_flux``: the SD run's phases with Flux's base, conditioning, objective and
samples), ``flow`` (rectified-flow objective, timestep sampling, 2x2 packing, position ids),
``conditioning`` (T5 + CLIP-L captions, cached, encoders released), ``samples`` (Flux Euler steps),
``metadata`` (sd-scripts' Flux ``ss_*`` and modelspec keys). The loader is ``models/flux_loader.py``.
"""
