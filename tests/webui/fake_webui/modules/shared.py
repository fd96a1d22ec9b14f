"""Mimics the parts of modules/shared.py (and shared_state.State) we use; options live in ``options``."""

from types import SimpleNamespace

from modules import options, shared_options  # noqa: F401  (shared_options registers the categories)

OptionInfo = options.OptionInfo

CALLS = []


class State:
    """Mimics modules/shared_state.py ``State`` (A1111 1.10.1 and Forge): the fields and methods we touch."""

    def __init__(self):
        self.job, self.job_count, self.job_no, self.textinfo = "", 0, 0, None
        self.sampling_step, self.sampling_steps = 0, 0
        self.interrupted = self.skipped = self.stopping_generation = False

    def interrupt(self):  # the WebUI's Interrupt button (POST /sdapi/v1/interrupt)
        self.interrupted = True

    def begin(self, job="(unknown)"):
        CALLS.append(("state.begin", job))
        self.sampling_step, self.job_count, self.job_no = 0, -1, 0
        self.skipped = self.interrupted = self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self):
        CALLS.append(("state.end",))
        self.job = ""
        self.job_count = 0


class Interrogator:
    def load(self):
        CALLS.append(("interrogator.load",))

    def generate_caption(self, pil_image):
        return f"a photo {pil_image.size[0]}x{pil_image.size[1]}"

    def unload(self):
        CALLS.append(("interrogator.unload",))


opts = options.Options()
cmd_opts = SimpleNamespace(lora_dir=None, api=True, api_auth=None, nowebui=False)
state = State()
interrogator = Interrogator()


def refresh_checkpoints():
    CALLS.append(("refresh_checkpoints",))
