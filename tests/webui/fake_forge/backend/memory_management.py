"""Mimics Forge's backend/memory_management.py: ``unload_all_models()`` frees every loaded model
(``free_memory(1e30, device, free_all=True)``); the model reloads itself on the next generation."""

CALLS = []


def unload_all_models():
    CALLS.append(("unload_all_models",))
