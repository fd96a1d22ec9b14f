"""Mimics extensions-builtin/Lora/network.py of A1111 1.10.1: ``NetworkOnDisk(name, filename)``."""


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name, self.filename = name, filename
        self.alias = name
