"""What the tab needs from the program it lives in; the standalone app's implementation.

The WebUI's implementation (``extension/webui/host.py``) overrides the parts that talk to the
WebUI (checkpoint list, Lora folder, VRAM, queue lock, progress bar, captioners, Lora loader).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._converters import converters
from ..errors import UserError
from ..jobs import JOBS, JobManager
from ..path_policy import PathPolicy
from ..training.events import TrainingEvent

log = logging.getLogger("lora_bridge.ui")

IMAGE_MODEL_SUFFIXES = (".safetensors", ".ckpt")
TEXT_MODEL_SUFFIXES = (".gguf", ".bin", ".ggml")
FLUX_PART_SUFFIXES = (*converters.safetensors_io.SAFETENSORS_SUFFIXES, ".gguf")  # Forge lists .ckpt/.pt/.bin too


class Host:
    """The standalone host: a models folder instead of the WebUI's list, no VRAM hand-off."""

    name = "standalone"
    in_webui = False

    def __init__(self, models_dir: str | Path | None = None, output_dir: str | Path | None = None,
                 jobs: JobManager | None = None, extra_folders: Sequence[str | Path] = (),
                 local_only: bool = True) -> None:
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self.output_dir = Path(output_dir).expanduser() if output_dir else Path.cwd() / "lora_output"
        self.extra_folders = [Path(folder).expanduser() for folder in extra_folders]
        self.local_only = local_only  # served on localhost only: reads are not restricted
        self.jobs = jobs or JOBS
        self.base_model: str | None = None
        self.last_output_name: str | None = None
        self.task_type = "text-to-image"
        self.published: list[str] = []
        self.overwrite = False  # the current run's ``overwrite``: may it replace a LoRA in lora_dir()

    # ---- models --------------------------------------------------------------------------
    def checkpoints(self) -> list[str]:
        """Image base models the user can pick (display titles)."""
        return sorted(self._scan(image=True))

    def refresh_checkpoints(self) -> list[str]:
        """Re-read the list (the WebUI re-scans its folders)."""
        return self.checkpoints()

    def current_checkpoint(self) -> str | None:
        """The model selected in the host, if any."""
        items = self.checkpoints()
        return items[0] if items else None

    def checkpoint_path(self, title: str) -> str:
        """File or folder behind a title (the standalone shows paths relative to the models folder)."""
        if not title:
            raise UserError("no base model chosen; pick one in Model (or pass --models-dir to `lora-bridge ui`)")
        found = self._scan(image=True)
        if title in found:
            return found[title]
        if Path(title).expanduser().exists():
            return str(Path(title).expanduser())
        raise UserError(f"{title}: no such model; press Refresh or give a full path")

    def text_models(self) -> list[str]:
        """GGUF / GGML LLaMA files for the Text LoRA section."""
        return sorted(self._scan(image=False))

    def text_model_path(self, title: str) -> str:
        """Path behind a text-model title."""
        found = self._scan(image=False)
        if title in found:
            return found[title]
        if title and Path(title).expanduser().exists():
            return str(Path(title).expanduser())
        raise UserError(f"{title or '(none)'}: no such GGUF/GGML model; pick one or give a full path")

    def _scan(self, image: bool) -> dict[str, str]:
        """{title: path} of models under the models folder (files, and diffusers folders for images)."""
        out: dict[str, str] = {}
        root = self.models_dir
        if root is None or not root.is_dir():
            return out
        suffixes = IMAGE_MODEL_SUFFIXES if image else TEXT_MODEL_SUFFIXES
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_file() and path.suffix.lower() in suffixes:
                if any(part.startswith(".") for part in path.relative_to(root).parts):
                    continue
                if image and (path.parent / "model_index.json").exists():
                    continue
                if image and path.parent != root and (path.parent.parent / "model_index.json").exists():
                    continue  # a component of a diffusers folder
                out[rel] = str(path)
            elif image and path.is_dir() and (path / "model_index.json").exists():
                out[rel + "/"] = str(path)
        return out

    def lora_dir(self) -> Path:
        """Where finished LoRAs land (the WebUI: its Lora folder)."""
        return self.output_dir

    def work_dir(self, output_name: str, task_type: str) -> Path:
        """A run's own folder (intermediate saves, state, samples, logs): not the Lora folder."""
        return self.output_dir / "runs" / (output_name or "my_lora")

    def path_policy(self) -> PathPolicy:
        """Where the tab, REST and Convert may write (output, models and --allow-dir folders) and read."""
        return PathPolicy.build([self.output_dir, self.models_dir, *self.extra_folders],
                                read_anywhere=self.local_only, why_restricted="lora-bridge ui --host",
                                hint="pass --allow-dir FOLDER to lora-bridge ui")

    def cache_dir(self) -> Path:
        """LoRA Bridge's own scratch folder (the dataset gallery's thumbnails)."""
        return self.output_dir / ".cache"

    def default_output_dir(self, config: dict[str, Any]) -> str:
        """The run folder a start without ``output_dir`` gets (tab and REST alike): ``work_dir`` of its name."""
        return str(self.work_dir(str(config.get("output_name") or "my_lora"),
                                 str(config.get("task_type") or "text-to-image")))

    def tokenizer_dirs(self) -> dict[str, Path]:
        """The host's own CLIP tokenizers: arch -> folder with ``tokenizer/`` (and ``tokenizer_2/``)."""
        return {}

    # ---- Flux.1 ----------------------------------------------------------------------------
    runs_flux = True  # the standalone app and the CLI train Flux; A1111 1.10 cannot run it

    def flux_part_files(self) -> list[str]:
        """Text-encoder and VAE files a Flux run may use: ``text_encoder/`` and ``VAE/`` under the models
        folder, laid out as Forge keeps them."""
        if self.models_dir is None:
            return []
        out = []
        for sub in ("text_encoder", "VAE"):
            folder = self.models_dir / sub
            if folder.is_dir():
                out += [str(p) for p in sorted(folder.rglob("*"))
                        if p.is_file() and p.suffix.lower() in FLUX_PART_SUFFIXES]
        return out

    def selected_flux_parts(self) -> list[str]:
        """The text-encoder/VAE files selected in the host for generation (Forge's "VAE / Text Encoder")."""
        return []

    # ---- datasets ------------------------------------------------------------------------
    def captioners(self) -> list[str]:
        """Auto-captioners available here (the WebUI offers its BLIP and DeepBooru)."""
        return []

    def caption(self, captioner: str, image_path: str) -> str:
        """Caption one image with a named captioner."""
        raise UserError(f"captioner {captioner!r} is only available inside the WebUI; "
                        "use `lora-bridge caption DIR --model BLIP_FOLDER` standalone")

    # ---- jobs ----------------------------------------------------------------------------
    def start_job(self, config: dict[str, Any]) -> dict[str, Any]:
        """Check ``config`` (shared schema), then start it; a refused start changes nothing.

        Config, base model and dataset are checked before the job slot, the WebUI's lock or its
        model are touched (``preflight``); the tab's per-job fields change only once it started.
        """
        from ..config import as_config
        from ..jobs import JobBusyError
        from ..training.run_folder import may_replace_outputs
        from .preflight import check_start

        if self.jobs.running:
            raise JobBusyError("a training job is already running; stop or cancel it first")
        from ..text.try_adapter import generation_running

        if generation_running():
            raise JobBusyError("Try (Text LoRA) is generating; press its Stop or wait, then start training")
        if isinstance(config, dict) and not config.get("output_dir"):
            config = {**config, "output_dir": self.default_output_dir(config)}
        cfg = as_config(config, "start")
        policy = self.path_policy()
        policy.check_config(cfg)  # before any file of the config is opened
        if cfg.base_model and not policy.may_write(Path(str(cfg.base_model)).expanduser().parent):
            # a legacy GGML base's GGUF copy then goes to the run folder, not beside the base
            cfg = dataclasses.replace(cfg, ggml_copy_beside_base=False)
        try:
            cfg, dataset = check_start(cfg, self.lora_dir(), self.tokenizer_dirs(), flux=self.runs_flux)
        except UserError:
            if self.jobs.running:  # a concurrent start won meanwhile (its lock, its folder): say busy
                raise JobBusyError("a training job is already running; stop or cancel it first") from None
            raise
        previous = (self.base_model, self.last_output_name, self.task_type, self.published, self.overwrite)
        self.base_model = str(cfg.base_model or "") or None
        self.last_output_name = str(cfg.output_name or "my_lora")
        self.task_type = str(cfg.task_type or "text-to-image")
        self.published = []
        self.overwrite = may_replace_outputs(cfg, self.lora_dir())  # a resume's own published copy too
        try:
            status = self.jobs.start(cfg, hooks=self)
        except BaseException:
            self.base_model, self.last_output_name, self.task_type, self.published, self.overwrite = previous
            raise
        return {**status, "dataset": dataset}

    # ---- Try (text adapters) ------------------------------------------------------------
    def try_adapter(self, base: str, adapter: str, prompt: str, **options: Any) -> Any:
        """Base and adapter answers (``text.try_adapter``); refused while a training job runs."""
        from ..text.try_adapter import try_adapter

        base_path = self.text_model_path(base)
        policy = self.path_policy()
        policy.readable(base_path, "base model")
        policy.readable(adapter, "adapter")
        return try_adapter(base_path, adapter, prompt, training_running=lambda: self.jobs.running,
                           slot=self.generation_slot, **options)

    def generation_slot(self, on_gpu: bool) -> contextlib.AbstractContextManager:
        """What Try holds while torch generates (``on_gpu``: on a CUDA device); nothing standalone."""
        return contextlib.nullcontext()

    def idle_message(self) -> str | None:
        """What Stop/Cancel say when no run is in progress (and the last run's end); None while one runs."""
        from ..jobs import RUNNING_STATES

        state = self.jobs.status()["state"]
        if state in RUNNING_STATES:
            return None
        if state == "idle":
            return "no run in progress"
        return f"no run in progress; the last run ({self.last_output_name}) ended: {state}"

    def before_run(self) -> None:
        """Nothing to free standalone."""

    def after_run(self) -> None:
        """Nothing to restore standalone."""

    def on_event(self, event: TrainingEvent) -> None:
        """The standalone has no progress bar besides the tab's own."""

    def after_save(self, path: str) -> str:
        """Publish the final image LoRA into the Lora folder (and re-list it), then check it.

        Image LoRAs are checked the way the host loads them; text adapters (GGUF, PEFT folder)
        only against their base, never through an image Lora loader.
        """
        image = self.task_type == "text-to-image"
        if image and Path(path).stem == self.last_output_name:
            path = str(publish(path, self.lora_dir(), overwrite=self.overwrite))
            self.published.append(path)
            try:
                self.refresh_loras()
            except Exception as exc:  # the file is there; only the host's list is stale
                log.warning("LoRA Bridge: could not refresh the Lora list: %s", exc)
        return self.check_lora(path, image=image)

    def refresh_loras(self) -> str:
        """Make a new file visible to the host's Lora browser."""
        return ""

    def check_lora(self, path: str, base: str | None = None, image: bool = True) -> str:
        """One line: how many LoRA modules of ``path`` match ``base`` (default: the job's base)."""
        if not Path(path).exists():
            raise UserError(f"{path}: no such file; give the path of a LoRA (.safetensors, .gguf or a PEFT folder)")
        adapter = converters.load_adapter(path)
        base = base or self.base_model
        total = len(adapter.modules)
        if not base:
            return f"{Path(path).name}: {total} modules (no base model to check against)"
        if not image and Path(base).is_file() and Path(base).suffix.lower() != ".gguf":
            return f"{Path(path).name}: {total} modules (legacy GGML base: checked by the run against its GGUF copy)"
        problems = converters.check_against_base(adapter, base)
        missing = sum(1 for p in problems if "no such module" in p or "implies weight" in p)
        matched = total - missing
        verdict = "all keys match" if matched == total and not problems else f"{len(problems)} problem(s)"
        line = f"{Path(path).name}: {matched}/{total} modules match {Path(base).name} ({verdict})"
        if problems:
            line += f"; first: {problems[0]}"
        return line


def publish(src: str | Path, lora_dir: str | Path, overwrite: bool = True) -> Path:
    """Copy a finished LoRA into the host's Lora folder (atomically); returns the new path.

    An existing file of that name is replaced only with ``overwrite`` (Start refuses such a run
    already; this covers a file that appeared while it trained).
    """
    src, dst = Path(src), Path(lora_dir) / Path(src).name
    if src.resolve() == dst.resolve():
        return dst
    if not overwrite and dst.exists():
        raise UserError(f"{dst}: already exists and overwrite is off; the new LoRA stays at {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic = converters.atomic
    with atomic.atomic_file(dst) as tmp:  # readable per the umask, like the WebUI's own files
        shutil.copyfile(src, tmp)
    return dst
