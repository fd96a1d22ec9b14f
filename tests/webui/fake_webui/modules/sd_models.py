"""Mimics modules/sd_models.py: the checkpoint list and the VRAM functions we call."""

from types import SimpleNamespace

CALLS = []


class CheckpointInfo:
    def __init__(self, filename, title):
        self.filename, self.title = filename, title


checkpoints_list = {}


def checkpoint_tiles(use_short=False):
    return list(checkpoints_list)


class FakeModel:
    device = "cuda"


model_data = SimpleNamespace(sd_model=FakeModel())


def unload_model_weights(sd_model=None, info=None):
    CALLS.append(("unload_model_weights", sd_model))
    (sd_model or model_data.sd_model).device = "cpu"
    return sd_model


def send_model_to_device(m):
    CALLS.append(("send_model_to_device", m))
    m.device = "cuda"
