"""The run lifecycle both engines (``image/``, ``text/``) share: optimizers, schedules, training state
(save, keep-last, resume), events and stop/cancel, progress sinks and the NaN guard, and ``init_lora``'s
file reading and layout planning. Imports nothing from either engine."""
