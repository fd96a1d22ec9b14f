"""Mimics modules/deepbooru.py: ``model.start() / tag_multi(img) / stop()``."""


class DeepDanbooru:
    def start(self):
        pass

    def tag_multi(self, pil_image, force_disable_ranks=False):
        return "1girl, solo"

    def stop(self):
        pass


model = DeepDanbooru()
