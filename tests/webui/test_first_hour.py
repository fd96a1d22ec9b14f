"""#23 items 1-10: what a new user met in the tab's first hour (standalone host, fake runner, no browser;
the layout items are in test_browser_layout.py)."""

from __future__ import annotations

import re
import shutil
import sys
import threading
from pathlib import Path

import pytest

from extension.jobs import JobManager
from extension.training.events import TrainingEvent, TrainResult
from extension.ui.host import Host
from extension.ui.tab import build_tab

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def models_dir(tmp_path, tiny_base, tiny_gguf):
    folder = tmp_path / "models"
    (folder / "llm").mkdir(parents=True)
    shutil.copy(tiny_base, folder / tiny_base.name)
    shutil.copy(tiny_base.with_suffix(".yaml"), folder / tiny_base.with_suffix(".yaml").name)
    sidecar = tiny_base.with_suffix(".tokenizer")  # Start checks for a tokenizer (#24)
    shutil.copytree(sidecar, folder / sidecar.name)
    shutil.copy(tiny_gguf, folder / "llm" / "tiny.gguf")
    return folder


@pytest.fixture
def built(tmp_path, models_dir, runner_factory):
    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras", jobs=JobManager(runner=runner_factory()))
    tab = build_tab(host)
    return tab, tab.lora_bridge_handlers, host


def _form(h, **values):
    """The image form's values (SD1.5 preset) with ``values`` typed into their fields."""
    by_name = dict(zip([f.name for f in h.image_fields], h.apply_preset("SD1.5"), strict=True))
    by_name.update(values)
    return [by_name[f.name] for f in h.image_fields]


def test_64px_starts_with_default_bucket_bounds_and_a_refusal_names_the_field(built, dataset, tiny_base):
    """Item 1: bucket bounds follow the resolution; a message names the field as the form shows it."""
    _, h, host = built
    started = h.start(str(dataset), tiny_base.name, "small", *_form(h, resolution=64))
    assert started.startswith("started training small"), started
    assert host.jobs.wait(30)["state"] == "done"
    from extension.config import bucket_bounds, config_from_dict

    assert bucket_bounds(config_from_dict({"resolution": 64})) == (64, 128)
    assert bucket_bounds(config_from_dict({"resolution": 512})) == (256, 1024)  # kohya's defaults at 512
    assert bucket_bounds(config_from_dict({"resolution": 512, "min_bucket_reso": 320})) == (320, 1024)
    refused = h.start(str(dataset), tiny_base.name, "small2", *_form(h, resolution=64, min_bucket_reso=256))
    assert refused.startswith("⚠️") and "Min bucket resolution (Settings → Advanced) 256" in refused, refused
    assert "min_bucket_reso" not in refused
    steps = h.start(str(dataset), tiny_base.name, "small3", *_form(h, max_train_steps="many"))
    assert "Max train steps (Settings)" in steps and "max_train_steps" not in steps, steps


def test_double_start_keeps_the_started_runs_confirmation(tmp_path, models_dir, runner_factory, dataset, tiny_base):
    """Item 2: two clicks within a second (gradio runs them concurrently with A1111's queue(64))."""
    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras",
                jobs=JobManager(runner=runner_factory(steps=100, delay=0.02)))
    h = build_tab(host).lora_bridge_handlers
    values = _form(h)
    answers: list[str] = []
    clicks = [threading.Thread(target=lambda: answers.append(h.start(str(dataset), tiny_base.name, "twice",
                                                                     *values))) for _ in range(2)]
    for click in clicks:
        click.start()
    for click in clicks:
        click.join(60)
    assert len(answers) == 2
    assert all(a.startswith("started training twice") for a in answers), answers
    assert host.jobs.status()["job_id"] == 1  # one run started
    host.jobs.cancel()
    host.jobs.wait(30)


def test_missing_and_empty_folders_are_worded_once(built, tmp_path, tiny_base):
    """Item 3: Load and Start say the same about a missing folder; an empty one warns on Load; Start points to
    the tab's Lint button, not the CLI."""
    _, h, _ = built
    missing = str(tmp_path / "nowhere")
    loaded = h.load_dataset(missing)[1]
    started = h.start(missing, tiny_base.name, "x", *_form(h))
    linted = h.lint(missing)
    assert loaded == started == linted, (loaded, started, linted)
    assert "no such folder; set Image folder in Dataset" in loaded
    empty = tmp_path / "empty"
    empty.mkdir()
    gallery, summary, _, _ = h.load_dataset(str(empty))
    assert gallery == [] and summary.startswith("⚠️") and "no images" in summary
    refused = h.start(str(empty), tiny_base.name, "x", *_form(h))
    assert refused.startswith("⚠️") and "Lint dataset" in refused and "lora-bridge lint" not in refused, refused


def test_text_form_has_its_own_help(built):
    """Item 4: no image (kohya) wording in the Text LoRA form."""
    _, h, _ = built
    for field in h.text_fields:
        assert not re.search(r"kohya|[Ii]mages?\b|unet|UNet", field.help), (field.name, field.help)
    image = {f.name: f.help for f in h.image_fields}
    assert "kohya" in image["learning_rate"]  # the image form keeps the kohya names its users know


# What only the other task's form may say: text runs have no images, captions or noise; image runs no GGUF,
# text samples or llama.cpp.
IMAGE_WORDS = r"kohya|[Ii]mages?\b|unet|UNet|safetensors|caption|\bnoise\b|VAE|Lora folder"
# (Flux's city96 GGUF transformers and T5 token counts are image words.)
TEXT_WORDS = r"text samples?|GGUF adapter|\.gguf|llama\.cpp|LLaMA|text runs?\b|\bfor text\b|(?<!T5 )tokens"


@pytest.mark.parametrize(("task", "foreign"), [("text-to-image", TEXT_WORDS), ("text-generation", IMAGE_WORDS)],
                         ids=["image-form", "text-form"])
def test_each_form_speaks_of_its_own_task(task, foreign):
    """Item 4 for both forms, every help string: the image form's Batch size said "Images or text samples"."""
    from extension.ui.form import schema_fields

    wrong = {f.name: f.help for f in schema_fields(task) if re.search(foreign, f.help)}
    assert wrong == {}, wrong


def test_text_tab_after_an_image_run_says_nothing_runs(built, dataset, tiny_base):
    """Item 5."""
    _, h, host = built
    assert h.start(str(dataset), tiny_base.name, "img", *_form(h)).startswith("started")
    assert host.jobs.wait(30)["state"] == "done"
    text_status = h.view()[5]
    assert "The current job" not in text_status
    assert "Nothing is running" in text_status and "ended: done" in text_status


def test_form_numbers_and_one_source_for_progress_and_status(built, dataset, tiny_base):
    """Item 6 (the browser checks the layout): optional numbers are number inputs; the bar and the status
    come from one status read, in the route's answer and in the gradio view alike."""
    from extension.ui import compat

    tab, h, host = built
    gr = compat.gradio()
    for prefix in ("img", "txt"):
        widget = next(b for b in tab.blocks.values() if getattr(b, "elem_id", "") == f"lora_bridge_{prefix}_"
                      "max_train_steps")
        assert isinstance(widget, gr.Number), type(widget)
    for unset in (None, 0):  # an empty number input may come back as 0
        values = _form(h, max_train_steps=unset)
        assert "max_train_steps" not in h.config_dict("text-to-image", str(dataset), tiny_base.name, "n", values)
    values = _form(h, max_train_steps=7.0)
    assert h.config_dict("text-to-image", str(dataset), tiny_base.name, "n", values)["max_train_steps"] == 7
    assert h.start(str(dataset), tiny_base.name, "same", *values).startswith("started")
    while host.jobs.running:
        view = h.live_payload()["view"]
        bar = re.search(r'data-step="(\d+)"', view["image_progress"])
        status = re.search(r'data-step="(\d+)"', view["image_status"])
        assert status is None or bar.group(1) == status.group(1), view
    host.jobs.wait(30)


def test_status_epoch_is_one_based_like_the_tab(tmp_path, models_dir, dataset, tiny_base, tiny_lora):
    """Item 7: /lora-bridge/v1/status and the tab say the same epoch; epoch 1 is the first."""

    def two_epochs(cfg, callback, control):
        callback(TrainingEvent("start", total_steps=4, epoch=0))
        for step in range(1, 5):
            callback(TrainingEvent("step", step=step, total_steps=4, epoch=(step - 1) // 2, loss=1.0))
            if step == 1:
                first = dict(host.jobs.status())
        final = Path(cfg.output_dir) / f"{cfg.output_name}.safetensors"
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(tiny_lora.read_bytes())
        callback(TrainingEvent("saved", step=4, total_steps=4, epoch=1, paths=[str(final)]))
        seen.append(first)
        return TrainResult("done", output_files=[str(final)], final_loss=1.0, steps=4, message="done")

    seen: list[dict] = []
    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras", jobs=JobManager(runner=two_epochs))
    h = build_tab(host).lora_bridge_handlers
    assert h.start(str(dataset), tiny_base.name, "epochs", *_form(h)).startswith("started")
    st = host.jobs.wait(30)
    assert seen[0]["epoch"] == 1  # during the first epoch
    assert st["epoch"] == 2 and "epoch 2 " in h.view()[1]


def test_tensorboard_missing_is_quiet_unless_asked_for(tmp_path, monkeypatch, capsys, caplog):
    """Item 9: no error-looking line per run when tensorboard is not installed; a set logging_dir gets one."""
    from extension.training.progress import TensorBoardSink

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without tensorboard
    step = TrainingEvent("step", step=1, total_steps=2, loss=1.0, lr=1e-4)
    caplog.set_level("INFO")
    TensorBoardSink(tmp_path / "logs")(step)  # the default folder
    assert capsys.readouterr().err == "" and not [r for r in caplog.records if r.levelname != "DEBUG"]
    asked = TensorBoardSink.for_run(tmp_path / "tb", tmp_path)
    asked(step)
    asked(step)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logging_dir is set" in err and "pip install tensorboard" in err, err


def test_readme_image_change_figures_state_their_settings():
    """Item 10: the 10.5/255 figure was wrong; every figure of the "Tested with" section states its settings."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Tested with"):text.index("### Known limits")]
    assert "10.5/255" not in section
    for line in section.splitlines():
        if re.search(r"\d/255", line):
            assert re.search(r"learning rate|lr ", line), line
    intro = " ".join(section[:section.index("| |")].split())
    for setting in ("10 steps", "64 px", "rank", "learning rate", "batch"):
        assert setting in intro, setting


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_live_route_answers_the_webui_login_and_api_auth_only(tmp_path, models_dir, runner_factory):
    """Item 8: the tab's live route on a real gradio server with a login (A1111's --gradio-auth): refused
    without the login cookie, answered with it and with --api-auth credentials; never a password prompt."""
    import httpx

    from extension.ui import compat, live
    from extension.ui.handlers import Handlers

    gr = compat.gradio()
    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras", jobs=JobManager(runner=runner_factory()))
    with compat.blocks() as demo:
        gr.Markdown("page")
    port = _free_port()
    server, *_ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                             auth=[("user", "secret")], quiet=True)
    try:
        assert live.register(server, Handlers(host).live_payload, api_auth=lambda: "api:key")
        assert not live.register(server, Handlers(host).live_payload)  # Reload UI: once per app
        url = f"http://127.0.0.1:{port}{live.ROUTE}"
        refused = httpx.get(url)
        assert refused.status_code == 403 and "www-authenticate" not in refused.headers
        assert httpx.get(url, auth=("api", "wrong")).status_code == 403
        assert httpx.get(url, auth=("api", "key")).status_code == 200
        with httpx.Client() as browser:
            assert browser.get(url).status_code == 403
            browser.post(f"http://127.0.0.1:{port}/login", data={"username": "user", "password": "secret"})
            answer = browser.get(url)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["ticks"]) == 3 and set(body["view"]) == set(live.KEYS)
        assert 'data-state="idle"' in body["view"]["image_progress"]
    finally:
        demo.close()


def test_live_route_is_open_when_the_webui_is(tmp_path, models_dir, runner_factory):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extension.ui import live
    from extension.ui.handlers import Handlers

    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras", jobs=JobManager(runner=runner_factory()))
    app = FastAPI()
    live.register(app, Handlers(host).live_payload)
    client = TestClient(app)
    first = client.get(live.ROUTE).json()
    assert first["ticks"][0].startswith("0|idle") and set(first["view"]) == set(live.KEYS)
    again = client.get(live.ROUTE, params={"seen": first["ticks"][0]}).json()
    assert again == {"ticks": first["ticks"], "view": {}}  # the page shows that view already


def _text_form(tab, h) -> list:
    """The Text LoRA form's values as the built tab shows them (what a Start sends untouched)."""
    by_id = {getattr(b, "elem_id", None): b for b in tab.blocks.values()}
    return [by_id[f"lora_bridge_txt_{f.name}"].value for f in h.text_fields]


def test_text_form_starts_at_a_rate_that_learns_and_says_so(built):
    """#23 Done-when: the Text LoRA form starts at 1e-3 (the schema, YAML and CLI keep 1e-4) and its help says so;
    a Start at the form's values sends that rate."""
    tab, h, _ = built
    values = dict(zip([f.name for f in h.text_fields], _text_form(tab, h), strict=True))
    assert float(values["learning_rate"]) == 1e-3
    info = next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == "lora_bridge_txt_learning_rate").info
    assert "starts at 1e-3" in info and "default 1e-4" in info, info
    sent = h.config_dict("text-generation", "data.txt", "llm/tiny.gguf", "t", _text_form(tab, h))
    assert sent["learning_rate"] == 1e-3
    from extension.config import config_from_dict

    assert config_from_dict({}).learning_rate == 1e-4  # image runs, YAML and the CLI keep kohya's rate
    image = dict(zip([f.name for f in h.image_fields], h.apply_preset("SD1.5"), strict=True))
    assert image["learning_rate"] == 1e-4


@pytest.mark.slow
def test_a_text_run_at_the_forms_start_values_follows_a_tiny_corpus(tmp_path, models_dir):
    """#23 Done-when: a Text LoRA Start with the form as it opens (10 epochs) on a 10-line corpus, then Try with
    greedy decoding: the adapter's answer follows the corpus, the base's does not. At 1e-4 (100 steps) it did not."""
    from extension.text.try_adapter import try_adapter

    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras", jobs=JobManager())
    tab = build_tab(host)
    h = tab.lora_bridge_handlers
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog ran to the mat\n" * 5, encoding="utf-8")
    started = h.start_text("llm/tiny.gguf", str(corpus), "tiny_corpus", *_text_form(tab, h))
    assert started.startswith("started text LoRA tiny_corpus"), started
    status = host.jobs.wait(600)
    assert status["state"] == "done", status
    adapter = next(p for p in status["output_files"] if p.endswith(".gguf"))
    answer = try_adapter(models_dir / "llm" / "tiny.gguf", adapter, "the cat", backend="torch")
    assert answer.adapter.strip().startswith("sat on the mat"), answer
    assert not answer.base.strip().startswith("sat on"), answer
