"""Mimics extensions-builtin/Lora/network.py: ``NetworkOnDisk``."""


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name, self.filename = name, filename
