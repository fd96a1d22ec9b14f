"""What the tab's buttons do, as plain functions of plain values (tested without a browser).

Each method returns values for the outputs ``tab.py`` wires it to. Bad input becomes a message in
the tab, never an exception in the server.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .._converters import converters
from ..errors import UserError
from ..jobs import RUNNING_STATES, JobBusyError
from ..path_policy import check_convert_paths, save_yaml_path
from . import chart, dataset_view, live
from .form import FormField, from_widget, schema_fields, to_widget
from .host import Host
from .presets import FLUX_PRESET, preset_values
from .wording import config_for_tab, for_tab

log = logging.getLogger("lora_bridge.ui")

IMAGE_TASK, TEXT_TASK = "text-to-image", "text-generation"
NO_CAPTIONER_LINE = ("no auto-captioner here (this host has no BLIP or DeepBooru); caption offline with "
                     "`lora-bridge caption DIR --model LOCAL_DIR` (a local BLIP model folder)")
LOADING = "loading base model…"
AGAIN = "\n\n(Start pressed again: this run is already running; Stop or Cancel it before starting another)"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, converters.AdapterError):  # the user's input: one WARNING line, no traceback
        log.warning("LoRA Bridge: %s", exc)
        return f"⚠️ {exc}"
    log.exception("LoRA Bridge tab error")
    return f"⚠️ {type(exc).__name__}: {exc}"


def friendly(default: Callable[[str], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn an exception into ``default(message)`` so a bad input never breaks the page."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                return default(_error_text(exc))

        return inner

    return wrap


class Handlers:
    """Event functions of one tab instance, bound to a host (WebUI or standalone)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.image_fields: list[FormField] = schema_fields(IMAGE_TASK)
        self.text_fields: list[FormField] = schema_fields(TEXT_TASK)
        self._dataset_items: list[tuple[str, str]] = []
        self._start_lock = threading.Lock()
        self._started: tuple[int, str] | None = None  # (job id, confirmation) of this tab's last start

    # ---- Dataset -------------------------------------------------------------------------
    def _image_folder(self, folder: str) -> Path:
        """The dataset folder, if the path policy lets the tab read it (checked before it is looked at)."""
        if str(folder or "").strip():
            self.host.path_policy().readable(folder, "image folder")
        return dataset_view.image_folder(folder)

    def load_dataset(self, folder: str) -> tuple[list[Any], str, str, str]:
        """(gallery, summary, first image path, its caption)."""
        try:
            items = dataset_view.list_images(str(self._image_folder(folder)))
        except Exception as exc:
            return [], _error_text(exc), "", ""
        self._dataset_items = items
        if not items:
            return [], (f"⚠️ {folder}: no images (png, jpg, webp, bmp) in this folder or below; add images with "
                        "captions, or set Image folder to another folder"), "", ""
        missing = sum(1 for _, c in items if not c)
        summary = f"{len(items)} image(s), {missing} without caption"
        if len(items) > dataset_view.MAX_GALLERY:
            summary += f" (gallery shows the first {dataset_view.MAX_GALLERY})"
        first = items[0] if items else ("", "")
        gallery = dataset_view.thumbnails(items, dataset_view.thumbnail_folder(self.host.cache_dir(), folder))
        return gallery, summary, first[0], first[1]

    def select_image(self, index: int | None) -> tuple[str, str]:
        """(image path, caption) of the gallery item at ``index``."""
        if index is None or not (0 <= int(index) < len(self._dataset_items)):
            return "", ""
        return self._dataset_items[int(index)]

    @friendly(lambda msg: msg)
    def save_caption(self, folder: str, image_path: str, caption: str) -> str:
        """Write an edited caption; returns a status line."""
        root = self.host.path_policy().writable(folder, "image folder (captions are written there)")
        if not _inside(Path(str(image_path)), root):
            raise UserError(f"{image_path}: not an image of {folder}; select an image in the gallery first")
        message = dataset_view.save_caption(folder, image_path, caption)
        self._dataset_items = [(p, caption.strip() if p == image_path else c) for p, c in self._dataset_items]
        return message

    @friendly(lambda msg: msg)
    def auto_caption(self, folder: str, captioner: str, overwrite: bool) -> str:
        """Caption images (without a caption unless ``overwrite``) with the host's captioner."""
        offered = self.host.captioners()
        if not offered:
            raise UserError(NO_CAPTIONER_LINE)
        if not captioner or captioner not in offered:
            raise UserError(f"captioner {captioner or '(none)'} is not available here; choose {' or '.join(offered)}")
        self.host.path_policy().writable(folder, "image folder (captions are written there)")
        items = dataset_view.list_images(folder)
        done = 0
        for path, caption in items:
            if caption and not overwrite:
                continue
            text = self.host.caption(captioner, path)
            dataset_view.save_caption(folder, path, text)
            done += 1
        self._dataset_items = dataset_view.list_images(folder)
        return f"captioned {done} image(s) with {captioner}; press Load to see them"

    @friendly(lambda msg: msg)
    def lint(self, folder: str) -> str:
        """The engine's dataset lint report, as text."""
        from ..data import lint as lint_module

        report = lint_module.lint_dataset(self._image_folder(folder))
        for attr in ("format", "summary", "to_text", "text"):
            value = getattr(report, attr, None)
            if callable(value):
                return str(value())
            if isinstance(value, str):
                return value
        return str(report)

    # ---- Model ---------------------------------------------------------------------------
    def refresh_models(self, current: str | None = None) -> Any:
        """Checkpoint dropdown update after re-scanning the host's folders."""
        from .compat import update

        try:
            choices = self.host.refresh_checkpoints()
        except Exception as exc:
            log.warning("refresh failed: %s", exc)
            choices = []
        value = current if current in choices else (choices[0] if choices else current)
        return update(choices=choices, value=value)

    def detect_model(self, title: str) -> str:
        """"Detected: SD1 / SDXL …" for the chosen checkpoint."""
        if not title:
            return "No model chosen."
        try:
            path = self.host.checkpoint_path(title)
            self.host.path_policy().readable(path, "base model")
            arch, shapes = converters.base_module_shapes(path, "sd")
            if arch == "flux":
                arch = f"Flux.1 {converters.flux_base.base_variant(path) or ''}".strip()
        except Exception as exc:
            return f"Could not read {title}: {_error_text(exc)}"
        line = f"Detected: **{arch or 'unknown'}** ({len(shapes)} LoRA-able modules) — `{path}`"
        if str(arch).startswith("Flux") and not self.host.runs_flux:
            line += " — A1111 1.10 cannot run Flux: Start refuses it here; Convert handles Flux LoRAs."
        return line

    # ---- Settings ------------------------------------------------------------------------
    def preset_dict(self, name: str) -> dict[str, Any]:
        """The preset's values for the image fields (the rest stay at the schema default); the Flux preset
        also fills the host's selected text encoders and VAE."""
        values = preset_values(name, {f.name for f in self.image_fields})
        if name == FLUX_PRESET:
            from .flux_parts import flux_defaults

            values = {**flux_defaults(self.host), **values}
        return values

    def apply_preset(self, name: str) -> list[Any]:
        """Widget values of every image field: schema defaults, then the preset."""
        values = self.preset_dict(name)
        return [to_widget(f, values.get(f.name, f.default)) for f in self.image_fields]

    def config_dict(self, task: str, data_dir: str, base: str, output_name: str,
                    values: Sequence[Any], fields: Sequence[FormField] | None = None) -> dict[str, Any]:
        """The shared-schema dict a Start (or export) sends to ``config_from_dict``."""
        fields = fields if fields is not None else (self.image_fields if task == IMAGE_TASK else self.text_fields)
        out: dict[str, Any] = {"task_type": task}
        for field, value in zip(fields, values, strict=True):
            parsed = from_widget(field, value)
            if parsed != field.default:
                out[field.name] = parsed
        if data_dir:
            out["train_data_dir"] = str(data_dir).strip()
        if base:
            out["base_model"] = self.host.checkpoint_path(base) if task == IMAGE_TASK else \
                self.host.text_model_path(base)
        if output_name:
            out["output_name"] = str(output_name).strip()
        out["output_dir"] = self.host.default_output_dir(out)
        return out

    def export_yaml(self, data_dir: str, base: str, output_name: str, *values: Any) -> str:
        """The form as YAML in the shared schema (what `lora-bridge train --config` reads)."""
        try:
            from ..config import config_from_dict, dump_config_yaml

            data = self.config_dict(IMAGE_TASK, data_dir, base, output_name, values)
            return dump_config_yaml(config_from_dict(data, "Settings"), only_task=True)
        except Exception as exc:
            return "# " + _error_text(exc)

    @friendly(lambda msg: msg)
    def save_yaml(self, text: str, path: str) -> str:
        """Write the YAML box to a ``.yaml``/``.yml`` file inside the host's folders (atomically)."""
        if not str(path or "").strip():
            raise UserError("give a file name for the YAML (e.g. my_lora.yaml)")
        target = save_yaml_path(self.host.path_policy(), self._yaml_location(path))
        if not isinstance(text, str):
            raise UserError("the YAML box must hold text")
        yaml.safe_load(text)
        if target.parent == self._runs_folder().resolve():
            target.parent.mkdir(parents=True, exist_ok=True)  # not made yet on a fresh install
        dataset_view.write_text_atomic(target, text)
        return f"saved {target}"

    def _yaml_location(self, path: Any) -> Any:
        """A bare YAML file name (the box's placeholder ``my_lora.yaml``) lives in the runs folder, which the
        path policy lets the tab write; any other path is taken as given (relative to the working folder)."""
        if not isinstance(path, str):
            return path  # refused by the path policy with its own line
        given = Path(path.strip()).expanduser()
        if len(given.parts) != 1 or given.is_absolute() or given.suffix.lower() not in (".yaml", ".yml"):
            return str(given)
        return str(self._runs_folder() / given)

    def _runs_folder(self) -> Path:
        """The folder holding the runs (WebUI: ``outputs/lora-bridge``; standalone: ``OUTPUT_DIR/runs``)."""
        return Path(self.host.work_dir("", IMAGE_TASK)).parent

    def import_yaml(self, text_or_path: str) -> list[Any]:
        """[message, data dir, model, output name, *field values] from YAML text or a YAML file path."""
        from ..config import config_from_dict, config_to_dict

        keep = len(self.image_fields)
        try:
            source = "YAML"
            candidate = Path(self._yaml_location(str(text_or_path)))
            if "\n" not in str(text_or_path).strip() and candidate.suffix in (".yaml", ".yml") and candidate.is_file():
                self.host.path_policy().readable(candidate, "YAML file")
                source, text_or_path = str(candidate), candidate.read_text(encoding="utf-8")
            cfg = config_from_dict(yaml.safe_load(text_or_path) or {}, source)
        except Exception as exc:
            return [_error_text(exc), *self._no_change(3 + keep)]
        data = config_to_dict(cfg)
        given = set(yaml.safe_load(text_or_path) or {})
        values = [to_widget(f, data.get(f.name, f.default)) for f in self.image_fields]
        from .compat import update

        # Keys the YAML leaves out keep what the Dataset / Model / Train sections show.
        own = [data[k] if k in given and data.get(k) else update() for k in ("train_data_dir", "base_model",
                                                                               "output_name")]
        return [f"imported {source}", *own, *values]

    @staticmethod
    def _no_change(count: int) -> list[Any]:
        from .compat import update

        return [update() for _ in range(count)]

    # ---- Train ---------------------------------------------------------------------------
    @friendly(lambda msg: msg)
    def start(self, data_dir: str, base: str, output_name: str, *values: Any) -> str:
        """Start image training; returns a status line (refusals included)."""
        if not str(base or "").strip():
            raise UserError("no base model chosen; pick a checkpoint in Model")
        dataset_view.image_folder(data_dir)
        return self._start(IMAGE_TASK, lambda: self.config_dict(IMAGE_TASK, data_dir, base, output_name, values),
                           "started training {name} on {base} ({dataset})")

    @friendly(lambda msg: msg)
    def start_text(self, base: str, data_path: str, output_name: str, *values: Any) -> str:
        """Start text LoRA training on a GGUF/GGML base."""
        if not str(base or "").strip():
            raise UserError("no base model chosen; pick a GGUF/GGML file in Text LoRA")
        if not str(data_path or "").strip():
            raise UserError("no text dataset given; give a .txt/.jsonl file or folder")
        return self._start(TEXT_TASK, lambda: self.config_dict(TEXT_TASK, data_path, base, output_name, values),
                           "started text LoRA {name} on {base} ({dataset})")

    def _start(self, task: str, make_config: Callable[[], dict[str, Any]], template: str) -> str:
        """Start a run from the form; the started run's confirmation survives a second click.

        Starts from this tab are serialised, so a double click reaches ``start_job`` once the first
        start has finished: it finds the run going and gets that run's confirmation back, not the
        busy message. Config keys in a refusal are named as the form shows them.
        """
        with self._start_lock:
            try:
                data = make_config()
                started = self.host.start_job(data)
            except JobBusyError:
                st = self.host.jobs.status()
                if self._started and self._started[0] == st["job_id"] and st["state"] in RUNNING_STATES:
                    return self._started[1] + AGAIN
                raise
            except UserError as exc:
                raise UserError(config_for_tab(str(exc), task)) from None
            message = template.format(name=data.get("output_name", "my_lora"), base=Path(data["base_model"]).name,
                                      dataset=started.get("dataset", ""))
            self._started = (started["job_id"], message)
            return message

    def stop(self) -> str:
        """Stop and save (says so when no run is in progress)."""
        idle = self.host.idle_message()
        if idle:
            return idle
        return f"{self.host.jobs.stop()['state']}: the run saves after the current step"

    def cancel(self) -> str:
        """Cancel without a final file (says so when no run is in progress)."""
        idle = self.host.idle_message()
        if idle:
            return idle
        return f"{self.host.jobs.cancel()['state']}: the run ends without a final file"

    # ---- live view (polled) --------------------------------------------------------------
    def ticks(self) -> list[str]:
        """[view tick, samples tick, result tick]: short strings that change only when what they stand for does.

        The poll button writes only these (hidden) boxes and has no inputs: gradio 3.41's polling
        re-sends the inputs captured at page load, and an output that is also edited by the user
        would be overwritten every tick. Their ``change`` events redraw the visible parts. The live
        route sends them too: the page clicks the poll button only when the samples or result tick moved.
        """
        st = self.host.jobs.status()
        job = st["job_id"]
        view = "|".join(str(v) for v in (job, st["state"], st["step"], st["total_steps"], st["epoch"],
                                          len(st["losses"]), len(st["saved"]), len(st["checks"]), len(st["log"]),
                                          st["message"], len(self.host.published)))
        ended = st["state"] if st["state"] not in RUNNING_STATES and st["state"] != "idle" else ""
        return [view, f"{job}|{len(st['samples'])}", f"{job}|{ended}"]

    def view_parts(self) -> dict[str, str]:
        """The live displays' inner HTML by ``live.KEYS``: each sub-tab shows the job of its own kind."""
        st = self.host.jobs.status()
        text_job = self.host.task_type == TEXT_TASK and st["job_id"]
        image_job = not text_job and st["job_id"]
        image = self._job_view(st) if image_job else self._other_view(st, "a text LoRA", "Text LoRA", text_job)
        text = self._job_view(st) if text_job else self._other_view(st, "an image LoRA", "Train", image_job)
        values = [*image, self.output_html(st if not text_job else None), *text,
                  self.text_result_html(st) if text_job else ""]
        return dict(zip(live.KEYS, values, strict=True))

    def view(self) -> list[str]:
        """[image progress, image status, image loss chart, output, text progress, text status, text loss chart,
        text result] as the displays' values (what the live route sends, wrapped)."""
        return [live.wrap(key, inner) for key, inner in self.view_parts().items()]

    def live_payload(self, seen: str | None = None) -> dict[str, Any]:
        """What ``GET /lora-bridge/tab/live?seen=VIEW_TICK`` answers: the ticks, and the displays' inner HTML
        unless the page already shows that view tick (an idle tab then gets a few hundred bytes a second)."""
        ticks = self.ticks()
        return {"ticks": ticks, "view": {} if seen == ticks[0] else self.view_parts()}

    @staticmethod
    def _other_view(st: dict[str, Any], kind: str, where: str, has_job: Any) -> tuple[str, str, str]:
        """This sub-tab's displays while the job is of the other kind: says whether it runs or ended."""
        note = ""
        if has_job and st["state"] in RUNNING_STATES:
            note = f"<p>{kind[0].upper() + kind[1:]} is training (see {where}); this form can start once it ends.</p>"
        elif has_job:
            note = f"<p>Nothing is running. The last run was {kind} (see {where}); it ended: {st['state']}.</p>"
        return chart.progress_html(0, 0, "idle", None), note, chart.loss_svg([])

    def _job_view(self, st: dict[str, Any]) -> tuple[str, str, str]:
        """(progress bar, status, loss chart) of the job, all from the one status ``st``."""
        running = st["state"] in RUNNING_STATES
        eta_seconds = st["eta_seconds"] if running else None
        progress = chart.progress_html(st["step"], st["total_steps"], st["state"], eta_seconds)
        name = html.escape(str(self.host.last_output_name or ""))
        state = f"<b>{html.escape(st['state'])}</b>"
        if running and not st["total_steps"]:
            status = f"<p>{state} · <code>{name}</code> · {html.escape(st['message'] or LOADING)}</p>"
            return progress, status, chart.loss_svg(st["losses"])
        loss = "—" if st["loss"] is None else f"{st['loss']:.4f}"
        speed = "" if not (running and st["it_per_second"]) else f" · {st['it_per_second']:.2f} it/s"
        eta = "" if eta_seconds is None else f" · ETA {chart.format_eta(eta_seconds)}"
        epochs = f" · epoch {st['epoch']}" if st["step"] and st["epoch"] else ""  # 1-based in the status
        who = f"<code>{name}</code>" if running else f"last run <code>{name}</code>"
        status = (f'<p>{state} · {who} · <span data-step="{st["step"]}">step {st["step"]}/{st["total_steps"]}'
                  f"</span>{epochs} · loss {loss}{speed}{eta}</p>")
        if st["message"]:
            status += live.message_html(st["message"])
        return progress, status, chart.loss_svg(st["losses"])

    def samples_view(self) -> Any:
        """The samples gallery (sent only when a sample was added, see ``ticks``)."""
        st = self.host.jobs.status()
        if self.host.task_type == TEXT_TASK:
            return []
        return [(p, Path(p).name) for p in st["samples"][-12:] if Path(p).is_file()]  # the run's own files

    def result_view(self) -> list[Any]:
        """[image LoRA name box, GGUF adapter box] once a job has ended; unchanged otherwise.

        The image Output tab only ever gets an image LoRA's name (one that was published); the
        Text LoRA tab's check box gets the GGUF adapter.
        """
        from .compat import update

        st = self.host.jobs.status()
        if st["state"] in RUNNING_STATES or st["state"] == "idle":
            return [update(), update()]
        if self.host.task_type == TEXT_TASK:
            adapters = [p for p in st["output_files"] or st["saved"] if str(p).endswith(".gguf")]
            return [update(), update(value=adapters[-1]) if adapters else update()]
        if self.host.published:
            return [update(value=Path(self.host.published[-1]).stem), update()]
        return [update(), update()]

    @staticmethod
    def text_result_html(st: dict[str, Any]) -> str:
        """Where a text run's files landed and how they were checked."""
        lines = [f"saved `{path}`" for path in st["saved"][-10:]]
        lines += [f"✔ {c}" if "all keys match" in c else f"⚠️ {c}" for c in st["checks"][-10:]]
        return live.list_html("", lines)

    def poll(self, seen: Any = "") -> list[Any]:
        """Everything at once (tests, the REST-free standalone): ``view()`` + samples + result."""
        return [*self.view(), self.samples_view(), *self.result_view()]

    def output_html(self, st: dict[str, Any] | None = None) -> str:
        """Files written by the run and what the WebUI's loader made of them (image runs only)."""
        head = f"Lora folder: `{self.host.lora_dir()}`"
        if st is None:
            return live.list_html(head, [])
        lines = [f"published `{path}`" for path in self.host.published]
        lines += [f"saved `{path}`" for path in st["saved"][-10:]]
        lines += [f"✔ {c}" if "all keys match" in c else f"⚠️ {c}" for c in st["checks"][-10:]]
        return live.list_html(head, lines)

    # ---- Output --------------------------------------------------------------------------
    @staticmethod
    def lora_tag(name: str, weight: float) -> str:
        """``<lora:name:0.7>`` for the prompt."""
        name = (name or "").strip()
        if not name:
            return ""
        return f"<lora:{name}:{float(weight):g}>"

    @friendly(lambda msg: msg)
    def refresh_loras(self) -> str:
        """Re-list the host's Lora folder."""
        return self.host.refresh_loras() or "refreshed"

    @friendly(lambda msg: msg)
    def check_file(self, path: str) -> str:
        """Run the loader check on any LoRA file."""
        if not str(path or "").strip():
            raise UserError("give the path of a LoRA to check (.safetensors, .gguf or a PEFT folder)")
        target = Path(str(path).strip()).expanduser()
        self.host.path_policy().readable(target, "LoRA to check")
        if not target.exists():
            raise UserError(f"{target}: no such file; give the path of a LoRA (.safetensors, .gguf or a PEFT folder)")
        return self.host.check_lora(str(target), image=target.suffix.lower() == ".safetensors")

    # ---- Convert -------------------------------------------------------------------------
    @friendly(lambda msg: msg)
    def convert(self, src: str, dst: str, to: str, base: str, arch: str, dtype: str, force: bool) -> str:
        """Convert between PEFT / diffusers / kohya / GGUF."""
        if not src or not dst:
            raise UserError("give a source file and a destination")
        paths = check_convert_paths(self.host.path_policy(), src, dst, base)
        options = {"dtype": dtype} if dtype else {}
        try:
            out = converters.convert(paths["src"], paths["dst"], to=to or None, base=paths.get("base"),
                                     arch=arch or None, force=bool(force), **options)
        except converters.AdapterError as exc:  # the CLI's wording; here the flags are fields
            raise UserError(for_tab(str(exc))) from None
        if _inside(Path(out), self.host.lora_dir()):
            return f"wrote {out}; {self.host.refresh_loras() or 'Lora list refreshed'}"
        return f"wrote {out}"

    @friendly(lambda msg: msg)
    def inspect(self, path: str, base: str) -> str:
        """Inspect an adapter (JSON)."""
        if not path:
            raise UserError("give the path of an adapter to inspect")
        policy = self.host.path_policy()
        policy.readable(path, "adapter")
        if str(base or "").strip():
            policy.readable(base, "base model")
        try:
            report = converters.inspect_adapter(path.strip(), base=(base or "").strip() or None)
        except converters.AdapterError as exc:
            raise UserError(for_tab(str(exc))) from None
        return json.dumps(report, indent=2, sort_keys=True, default=str)

    # ---- Text LoRA -----------------------------------------------------------------------
    def refresh_text_models(self, current: str | None = None) -> Any:
        """GGUF/GGML dropdown update."""
        from .compat import update

        choices = self.host.text_models()
        return update(choices=choices, value=current if current in choices else (choices[0] if choices else current))

    @friendly(lambda msg: msg)
    def llama_cpp_check(self, base: str, adapter: str) -> str:
        """Load base + adapter with llama.cpp (llama-cpp-python), if installed, once the adapter fits the base."""
        from ..text.try_adapter import checked_adapter

        base_path = self.host.text_model_path(base)
        policy = self.host.path_policy()
        policy.readable(base_path, "base model")
        if adapter:
            policy.readable(adapter, "GGUF adapter")
        if not adapter or not Path(adapter).expanduser().is_file():
            raise UserError(f"{adapter or '(empty)'}: no such GGUF adapter; train or convert one first")
        checked_adapter(adapter, Path(base_path))  # llama.cpp would take the WebUI down with a misfit
        try:
            import llama_cpp
        except ImportError:
            raise UserError("llama-cpp-python is not installed; `pip install llama-cpp-python` "
                            "(optional, never installed by install.py)") from None
        llm = llama_cpp.Llama(model_path=base_path, lora_path=str(Path(adapter).expanduser()), n_ctx=64,
                              verbose=False)
        tokens = llm.tokenize(b"Hello")
        llm.eval(tokens)
        del llm
        return f"llama.cpp loaded {Path(base_path).name} + {Path(adapter).name} and evaluated {len(tokens)} tokens"


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or below it."""
    try:
        path.resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True
