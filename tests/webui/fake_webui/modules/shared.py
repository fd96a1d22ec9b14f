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
# The flags we read, with modules/cmd_args.py's defaults (A1111 1.10.1, Forge): --listen/--share/
# --enable-insecure-extension-access/--hide-ui-dir-config store_true, --server-name/--ngrok/--ckpt-dir/
# --cors-allow-origins(-regex)/--api-auth str or None.
cmd_opts = SimpleNamespace(lora_dir=None, api=True, api_auth=None, nowebui=False, listen=False, share=False,
                           ngrok=None, server_name=None, enable_insecure_extension_access=False, ckpt_dir=None,
                           hide_ui_dir_config=False, cors_allow_origins=None, cors_allow_origins_regex=None)


def derive_cmd_opts():
    """What modules/shared_cmd_options.py computes once after parsing the flags (A1111 1.10.1, Forge)."""
    cmd_opts.webui_is_non_local = any([cmd_opts.share, cmd_opts.listen, cmd_opts.ngrok, cmd_opts.server_name])
    cmd_opts.disable_extension_access = cmd_opts.webui_is_non_local and not cmd_opts.enable_insecure_extension_access


derive_cmd_opts()
# modules/shared_options.py ``restricted_opts`` (shared.restricted_opts is the same set): options that
# --hide-ui-dir-config makes read-only (a few of the real names).
restricted_opts = {"samples_filename_pattern", "directories_filename_pattern", "outdir_samples"}
state = State()
interrogator = Interrogator()


def refresh_checkpoints():
    CALLS.append(("refresh_checkpoints",))
