"""The tab's host inside A1111 1.10 / Forge: every ``modules.*`` call of the extension is here.

WebUI calls used (and mimicked by tests/webui/fake_webui):
``sd_models.checkpoint_tiles / checkpoints_list / model_data.sd_model / unload_model_weights /
send_model_to_device``, ``shared.refresh_checkpoints / opts.sd_model_checkpoint / cmd_opts.lora_dir
/ state / interrogator``, ``call_queue.queue_lock``, ``deepbooru.model``, ``paths.models_path /
data_path / script_path``, Forge's ``backend.memory_management.unload_all_models``, the CLIP
tokenizers Forge and Forge Neo ship under ``backend/huggingface/``, and the Lora built-in's
``networks`` / ``network`` modules.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..jobs import JobBusyError, JobManager
from ..path_policy import PathPolicy, parse_folders
from ..training.events import TrainingEvent
from ..ui.host import FLUX_PART_SUFFIXES, Host

log = logging.getLogger("lora_bridge.webui")

BLIP, DEEPBOORU = "BLIP (WebUI)", "DeepBooru (WebUI)"
EXTRA_FOLDERS_OPTION = "lora_bridge_extra_folders"
NON_LOCAL_FLAGS = ("share", "listen", "ngrok", "server_name")
LORA_PARTS = ("lora_down", "lora_up", "lora_A", "lora_B", "alpha", "lora_mid", "dora_scale")
# The diffusers folders (tokenizer/, tokenizer_2/) Forge and Forge Neo ship under backend/huggingface/.
HOST_TOKENIZERS = {"sd1": "runwayml/stable-diffusion-v1-5", "sd2": "stabilityai/stable-diffusion-2-1",
                   "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
                   "flux": "black-forest-labs/FLUX.1-dev"}  # Flux: CLIP-L tokenizer/ and T5 tokenizer_2/


def _modules(name: str) -> Any:
    """``modules.<name>`` of the running WebUI."""
    return importlib.import_module(f"modules.{name}")


def webui_is_local(cmd_opts: Any) -> bool:
    """True when the WebUI listens only on this computer: none of A1111's ``webui_is_non_local`` flags
    (--share, --listen, --ngrok, --server-name; modules/shared_cmd_options.py in A1111 1.10.1 and Forge)."""
    return not any(getattr(cmd_opts, name, None) for name in NON_LOCAL_FLAGS)


def exposed_by(cmd_opts: Any) -> str:
    """The flags that make the WebUI reachable beyond localhost, "" when it is local or trusted.

    A1111 1.10.1 and Forge (modules/shared_cmd_options.py): ``webui_is_non_local = any([share, listen,
    ngrok, server_name])`` and ``disable_extension_access = webui_is_non_local and not
    enable_insecure_extension_access``; the WebUI's own value is used when it set one.
    """
    flags = [f"--{name.replace('_', '-')}" for name in NON_LOCAL_FLAGS if getattr(cmd_opts, name, None)]
    restricted = getattr(cmd_opts, "disable_extension_access", None)
    if restricted is None:
        restricted = bool(flags) and not getattr(cmd_opts, "enable_insecure_extension_access", False)
    if not restricted:
        return ""
    return (", ".join(flags) or "non-local WebUI") + " without --enable-insecure-extension-access"


def model_dir_flags(cmd_opts: Any) -> list[str]:
    """The extra model folders named on the command line: Forge's ``--vae-dir`` / ``--text-encoder-dir`` and
    Forge Neo's repeatable ``--ckpt-dirs``, ``--lora-dirs``, ``--vae-dirs``, ``--text-encoder-dirs`` (lists)."""
    out: list[str] = []
    for name in ("vae_dir", "text_encoder_dir", "ckpt_dirs", "lora_dirs", "vae_dirs", "text_encoder_dirs"):
        value = getattr(cmd_opts, name, None)
        out += [str(v) for v in value if v] if isinstance(value, (list, tuple)) else [str(value)] if value else []
    return out


def is_forge() -> bool:
    """Forge ships its own memory manager under ``backend``."""
    try:
        importlib.import_module("backend.memory_management")
    except Exception:
        return False
    return True


class WebUIHost(Host):
    """Checkpoints, Lora folder, VRAM hand-off, queue lock and progress bar of the running WebUI."""

    name = "webui"
    in_webui = True

    def __init__(self, jobs: JobManager | None = None) -> None:
        super().__init__(jobs=jobs)
        self._lock_held = False
        self._exclusive = True
        self._unloaded_model: Any = None

    # ---- models --------------------------------------------------------------------------
    def checkpoints(self) -> list[str]:
        """The WebUI's checkpoint dropdown: titles in A1111, names (no ``[hash]``) in Forge."""
        sd_models = _modules("sd_models")
        try:
            return list(sd_models.checkpoint_tiles())
        except TypeError:  # Forge's signature differs between releases
            return [getattr(info, "name", title) for title, info in sd_models.checkpoints_list.items()]

    def refresh_checkpoints(self) -> list[str]:
        """Re-scan the WebUI's model folders."""
        _modules("shared").refresh_checkpoints()
        return self.checkpoints()

    def current_checkpoint(self) -> str | None:
        """The entry of ``checkpoints()`` for the checkpoint selected in the WebUI's top bar.

        ``opts.sd_model_checkpoint`` holds a title (``name [hash]`` once hashed) while Forge's
        dropdown lists names: both are mapped through the WebUI's own lookup.
        """
        selected = getattr(_modules("shared").opts, "sd_model_checkpoint", None)
        info = _checkpoint_info(selected)
        if info is None:
            return selected
        tiles = self.checkpoints()
        for candidate in (getattr(info, "title", None), getattr(info, "name", None),
                          getattr(info, "short_title", None)):
            if candidate in tiles:
                return candidate
        return selected

    def checkpoint_path(self, title: str) -> str:
        """File behind an entry of the checkpoint dropdown (title, name or alias; or a full path)."""
        if not title:
            raise UserError("no base model chosen; pick a checkpoint in Model")
        info = _checkpoint_info(title)
        if info is not None:
            return str(info.filename)
        return super().checkpoint_path(title)

    @property
    def runs_flux(self) -> bool:  # type: ignore[override]
        """Forge and Forge Neo run Flux.1; A1111 1.10 does not."""
        return is_forge()

    def flux_part_files(self) -> list[str]:
        """Forge's "VAE / Text Encoder" choices: ``modules_forge.main_entry.module_list`` ({file name: path}
        of models/VAE, models/text_encoder and the --vae-dir/--text-encoder-dir folders), filled by Forge's
        own ``refresh_models()`` when still empty. None in A1111."""
        if not is_forge():
            return []
        try:
            main_entry = importlib.import_module("modules_forge.main_entry")
            if not main_entry.module_list:
                main_entry.refresh_models()
            paths = [str(p) for p in main_entry.module_list.values()]
        except Exception as exc:  # a Forge without this list: the fields still take a typed path
            log.warning("LoRA Bridge: Forge's text encoder / VAE list is not readable: %s", exc)
            return []
        return [p for p in sorted(paths) if Path(p).suffix.lower() in FLUX_PART_SUFFIXES]

    def selected_flux_parts(self) -> list[str]:
        """Forge's ``opts.forge_additional_modules`` (the top bar's "VAE / Text Encoder" paths)."""
        if not is_forge():
            return []
        selected = _modules("shared").opts.data.get("forge_additional_modules") or []
        return [str(p) for p in selected] if isinstance(selected, list) else []

    def _scan(self, image: bool) -> dict[str, str]:
        """Text models: GGUF/GGML files under models/ (LLM, llama, text)."""
        if image:
            return {}
        root = Path(getattr(_modules("paths"), "models_path", "models"))
        found: dict[str, str] = {}
        for sub in ("LLM", "llama", "text"):
            folder = root / sub
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.is_file() and path.suffix.lower() in (".gguf", ".bin", ".ggml"):
                        found[str(path.relative_to(root))] = str(path)
        return found

    def tokenizer_dirs(self) -> dict[str, Path]:
        """The CLIP tokenizers the WebUI ships (Forge, Forge Neo: ``backend/huggingface/<repo>/``).

        A1111 ships none: its tokenizers come from the HF cache or open_clip, which the loader also reads.
        """
        root = Path(getattr(_modules("paths"), "script_path", ".")) / "backend" / "huggingface"
        return {arch: root / repo for arch, repo in HOST_TOKENIZERS.items() if (root / repo / "tokenizer").is_dir()}

    def lora_dir(self) -> Path:
        """The WebUI's Lora folder (``--lora-dir`` or models/Lora)."""
        configured = getattr(_modules("shared").cmd_opts, "lora_dir", None)
        if configured:
            return Path(configured)
        return Path(getattr(_modules("paths"), "models_path", "models")) / "Lora"

    def work_dir(self, output_name: str, task_type: str) -> Path:
        """Runs live under the WebUI's outputs/ folder; only the final file goes to the Lora folder."""
        return self.runs_dir() / (output_name or "my_lora")

    def runs_dir(self) -> Path:
        """``outputs/lora-bridge`` of the WebUI's data folder."""
        return Path(getattr(_modules("paths"), "data_path", ".")) / "outputs" / "lora-bridge"

    def path_policy(self) -> PathPolicy:
        """Writes: Lora folder, models/LLM, outputs/lora-bridge and Settings' extra folders. Reads: anywhere
        unless the WebUI is reachable from the network (``exposed_by``); then those and the model folders."""
        models = Path(getattr(_modules("paths"), "models_path", "models"))
        shared = _modules("shared")
        extra = parse_folders(shared.opts.data.get(EXTRA_FOLDERS_OPTION, ""))
        checkpoints = [getattr(shared.cmd_opts, "ckpt_dir", None),
                       getattr(_modules("sd_models"), "model_path", None), *model_dir_flags(shared.cmd_opts)]
        exposed = exposed_by(shared.cmd_opts)
        return PathPolicy.build([self.lora_dir(), models / "LLM", self.runs_dir(), *extra],
                                read_roots=[models, *[c for c in checkpoints if c]],
                                read_anywhere=not exposed, why_restricted=exposed,
                                hint="add the folder in Settings → Training → LoRA Training → extra folders")

    def cache_dir(self) -> Path:
        """Beside the runs under the WebUI's outputs/ folder (never the WebUI's temp folder)."""
        return Path(getattr(_modules("paths"), "data_path", ".")) / "outputs" / "lora-bridge" / ".cache"

    # ---- captioners ----------------------------------------------------------------------
    def captioners(self) -> list[str]:
        """The WebUI's BLIP interrogator and DeepBooru (SD.Next has no ``shared.interrogator``)."""
        out = []
        if getattr(_modules("shared"), "interrogator", None) is not None:
            out.append(BLIP)
        try:
            if getattr(_modules("deepbooru"), "model", None) is not None:
                out.append(DEEPBOORU)
        except Exception:
            pass
        return out

    def caption(self, captioner: str, image_path: str) -> str:
        """Caption one image with the WebUI's own models (they download on first use).

        When the WebUI cannot load them (offline, no weights: Forge fails with ``IndexError``),
        the user gets one line naming the offline alternative.
        """
        from PIL import Image

        if captioner not in (BLIP, DEEPBOORU):
            return super().caption(captioner, image_path)  # refuses it with the standalone's message
        with Image.open(image_path) as img:
            pil = img.convert("RGB")
        try:
            return self._caption_with_webui(captioner, pil)
        except UserError:
            raise
        except Exception as exc:
            log.debug("WebUI captioner failed", exc_info=True)
            raise UserError(f"{captioner} could not run: the WebUI could not load its model weights "
                            f"({type(exc).__name__}: {exc}); it downloads them on first use. Offline, caption "
                            "with lora-bridge caption DIR --model LOCAL_DIR (a local BLIP folder)") from None

    def _caption_with_webui(self, captioner: str, pil: Any) -> str:
        """BLIP through ``shared.interrogator`` or DeepBooru through ``modules.deepbooru``."""
        if captioner == BLIP:
            interrogator = _modules("shared").interrogator
            interrogator.load()
            try:
                return str(interrogator.generate_caption(pil)).strip()
            finally:
                interrogator.unload()
        if captioner == DEEPBOORU:
            model = _modules("deepbooru").model
            model.start()
            try:
                return str(model.tag_multi(pil)).strip()
            finally:
                model.stop()
        raise UserError(f"captioner {captioner!r} is not the WebUI's BLIP or DeepBooru")

    # ---- VRAM hand-off and progress --------------------------------------------------------
    def exclusive(self) -> bool:
        """Whether this run holds the generation queue and frees the WebUI's model.

        Image runs always do. Text runs follow Settings → ``lora_bridge_text_exclusive``: ``auto``
        (default) only when torch would train on a GPU, where the two may not fit together; on CPU
        a text run's memory is host RAM next to the WebUI's (README, The LoRA Training tab → Text LoRA).
        """
        if self.task_type != "text-generation":
            return True
        try:
            import torch

            on_gpu = bool(torch.cuda.is_available())
        except Exception:
            on_gpu = False
        return self._text_exclusive(on_gpu)

    def _text_exclusive(self, on_gpu: bool) -> bool:
        """Settings → ``lora_bridge_text_exclusive`` for text work (runs, Try); ``auto`` means ``on_gpu``."""
        mode = str(_modules("shared").opts.data.get("lora_bridge_text_exclusive", "auto"))
        if mode in ("always", "never"):
            return mode == "always"
        return on_gpu

    @contextlib.contextmanager
    def generation_slot(self, on_gpu: bool) -> Iterator[None]:
        """While Try generates with torch: the generation queue (and VRAM) as a text run would take them.

        On the CPU (``auto``) nothing is taken: txt2img keeps working beside it. Refused when the WebUI is generating.
        """
        if not self._text_exclusive(on_gpu):
            yield
            return
        lock = _modules("call_queue").queue_lock
        if not lock.acquire(blocking=False):
            raise JobBusyError("the WebUI is busy generating; press Generate in Try when it has finished")
        try:
            if _modules("shared").opts.data.get("lora_bridge_free_vram", True):
                self._free_vram()
            yield
        finally:
            try:
                self._restore_model()
            finally:
                lock.release()

    def before_run(self) -> None:
        """Take the generation queue lock (refuse when busy) and free the WebUI's model (see ``exclusive``)."""
        self._exclusive = self.exclusive()
        if not self._exclusive:
            return
        lock = _modules("call_queue").queue_lock
        if not lock.acquire(blocking=False):
            raise JobBusyError("the WebUI is busy generating; start training when it has finished")
        self._lock_held = True
        try:
            if _modules("shared").opts.data.get("lora_bridge_free_vram", True):
                self._free_vram()
            state = _modules("shared").state
            state.begin(job="LoRA training")
            state.textinfo = "LoRA training: starting"
        except BaseException:
            self.after_run()
            raise

    def _free_vram(self) -> None:
        """A1111: move the loaded model to CPU (kept for restore). Forge: unload everything."""
        if is_forge():
            importlib.import_module("backend.memory_management").unload_all_models()
            return
        sd_models = _modules("sd_models")
        model = getattr(sd_models.model_data, "sd_model", None)  # shared.sd_model would load one
        if model is not None:
            sd_models.unload_model_weights(model)
            self._unloaded_model = model

    def _restore_model(self) -> None:
        """A1111: the model ``_free_vram`` moved to CPU goes back to its device."""
        model, self._unloaded_model = self._unloaded_model, None
        if model is not None:
            _modules("sd_models").send_model_to_device(model)

    def after_run(self) -> None:
        """Put the model back on its device (A1111; Forge reloads on use) and release the lock."""
        try:
            self._restore_model()
            if self._lock_held:
                try:
                    _modules("shared").state.end()
                except Exception:
                    log.debug("shared.state.end failed", exc_info=True)
        finally:
            if self._lock_held:
                self._lock_held = False
                _modules("call_queue").queue_lock.release()

    def on_event(self, event: TrainingEvent) -> None:
        """Mirror progress into ``shared.state`` (``/sdapi/v1/progress``) while this run holds the queue."""
        if not self._exclusive:
            return  # a generation may be running: its progress owns shared.state
        state = _modules("shared").state
        if event.total_steps:
            state.sampling_steps = event.total_steps
            state.job_count = 1
        state.sampling_step = event.step
        loss = f", loss {event.loss:.4f}" if event.loss is not None else ""
        state.textinfo = f"LoRA training: step {event.step}/{event.total_steps}{loss}"
        # shared.state.interrupted is not read: the WebUI's Interrupt button is for the generation
        # queued behind this run; training stops only from the tab or the API.

    # ---- Lora folder and loader ------------------------------------------------------------
    def refresh_loras(self) -> str:
        """Re-list the Lora folder (what ``/sdapi/v1/loras`` and the Lora cards read)."""
        networks = sys.modules.get("networks")
        if networks is not None and hasattr(networks, "list_available_networks"):
            networks.list_available_networks()
            return "Lora list refreshed"
        return "Lora built-in not loaded; press the Lora tab's refresh button"

    def check_lora(self, path: str, base: str | None = None, image: bool = True) -> str:
        """Load an image LoRA through the WebUI's ``networks.load_network``; count modules that matched.

        Only a ``.safetensors`` image LoRA is handed to the WebUI's loader (it would unpickle
        anything else). Text adapters, other files, Forge (whose loader differs) and a WebUI
        with no model loaded get the format layer's check.
        """
        networks = sys.modules.get("networks")
        network = getattr(networks, "network", None) or sys.modules.get("network")  # networks.py imports it
        check = _modules("shared").opts.data.get("lora_bridge_check_with_loader", True)
        loaded = getattr(_modules("sd_models").model_data, "sd_model", None) is not None  # never load one to check
        safetensors_file = Path(path).is_file() and Path(path).suffix.lower() == ".safetensors"
        if (not (check and loaded and image and safetensors_file) or is_forge() or networks is None
                or not hasattr(network, "NetworkOnDisk")):
            if base is None and self.base_model:
                base = self.base_model
            return super().check_lora(path, base, image=image) + " (format-layer check)"
        name = Path(path).stem
        net = networks.load_network(name, network.NetworkOnDisk(name, str(path)))
        total = count_lora_modules(path)
        matched = len(getattr(net, "modules", {}))
        verdict = "all keys match" if matched == total else f"{total - matched} module(s) did NOT match"
        return f"{Path(path).name}: WebUI Lora loader matched {matched}/{total} modules ({verdict})"


def _checkpoint_info(title: str | None) -> Any:
    """The WebUI's ``CheckpointInfo`` for a dropdown entry, through the WebUI's own lookup.

    ``checkpoint_aliases`` knows a checkpoint by title, name, hashes and short names in both
    hosts (``checkpoints_list`` is keyed by the title, which gains `` [hash]`` once hashed); a
    full path is never matched by substring.
    """
    if not title:
        return None
    sd_models = _modules("sd_models")
    aliases = getattr(sd_models, "checkpoint_aliases", None) or getattr(sd_models, "checkpoint_alisases", {})
    info = aliases.get(title) or sd_models.checkpoints_list.get(title)
    if info is not None or Path(title).expanduser().exists():
        return info
    match = getattr(sd_models, "get_closet_checkpoint_match", None)
    return match(title) if match is not None else None


def count_lora_modules(path: str | Path) -> int:
    """Distinct LoRA modules in a kohya file, grouped the way A1111's loader groups keys."""
    from .._converters import converters

    header, _ = importlib.import_module(converters.__name__ + ".safetensors_io").read_header(Path(path))
    keys = [k for k in header if k != "__metadata__"]
    prefixes = set()
    for key in keys:
        prefix, _, part = key.partition(".")
        if prefix != "bundle_emb" and part.split(".")[0] in LORA_PARTS:
            prefixes.add(prefix)
    return len(prefixes)
