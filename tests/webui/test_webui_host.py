"""The WebUI host against the stand-in ``modules`` API: VRAM hand-off, queue lock, progress bar,
Lora folder, loader check, captioners, settings and API registration."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from extension.jobs import JobBusyError, JobManager


@pytest.fixture
def webui_host(fake_webui, runner_factory, tiny_base):
    from modules import sd_models

    from extension.webui.host import WebUIHost

    sd_models.list_models([str(tiny_base)])
    sd_models.model_data.sd_model = sd_models.FakeModel()
    sd_models.CALLS.clear()
    return WebUIHost(jobs=JobManager(runner=runner_factory(steps=4)))


def start_config(host, dataset, name="webui_lora"):
    return {"base_model": host.checkpoint_path("tiny-sd1.safetensors"), "train_data_dir": str(dataset),
            "output_name": name, "output_dir": str(host.work_dir(name, "text-to-image"))}


def test_models_and_folders(webui_host, tmp_path, tiny_base):
    from modules import shared

    assert webui_host.checkpoints() == ["tiny-sd1.safetensors"]
    assert webui_host.checkpoint_path("tiny-sd1.safetensors") == str(tiny_base)
    assert webui_host.lora_dir() == tmp_path / "models" / "Lora"
    shared.cmd_opts.lora_dir = str(tmp_path / "elsewhere")
    assert webui_host.lora_dir() == tmp_path / "elsewhere"
    assert webui_host.work_dir("x", "text-to-image") == tmp_path / "outputs" / "lora-bridge" / "x"
    webui_host.refresh_checkpoints()
    assert ("refresh_checkpoints",) in shared.CALLS


def test_training_frees_vram_holds_lock_and_restores(webui_host, dataset, tmp_path):
    import networks
    from modules import call_queue, sd_models, shared

    model = sd_models.model_data.sd_model
    seen = {}
    original = webui_host.on_event

    def spy(event):
        original(event)
        seen.setdefault("locked", call_queue.queue_lock.locked())
        seen.setdefault("device", model.device)
        seen["textinfo"] = shared.state.textinfo

    webui_host.on_event = spy
    networks.KNOWN.update({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k",
                           "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"})
    webui_host.start_job(start_config(webui_host, dataset))
    st = webui_host.jobs.wait(30)
    assert st["state"] == "done"
    assert seen["locked"] and seen["device"] == "cpu" and seen["textinfo"].startswith("LoRA training: step 4/4")
    assert model.device == "cuda" and not call_queue.queue_lock.locked()  # restored and released
    assert [c[0] for c in sd_models.CALLS] == ["unload_model_weights", "send_model_to_device"]
    assert ("state.begin", "LoRA training") in shared.CALLS and ("state.end",) in shared.CALLS
    published = tmp_path / "models" / "Lora" / "webui_lora.safetensors"
    assert published.is_file() and webui_host.published == [str(published)]
    assert st["checks"] == ["webui_lora.safetensors: WebUI Lora loader matched 2/4 modules (2 module(s) did NOT match)"]
    assert ("load_network", "webui_lora", str(published)) in networks.CALLS
    assert webui_host.refresh_loras() == "Lora list refreshed"


def test_failure_still_restores(fake_webui, runner_factory, dataset, tiny_base):
    from modules import call_queue, sd_models

    from extension.webui.host import WebUIHost

    sd_models.list_models([str(tiny_base)])
    host = WebUIHost(jobs=JobManager(runner=runner_factory(fail=True)))
    model = sd_models.model_data.sd_model
    host.start_job({"base_model": str(tiny_base), "train_data_dir": str(dataset),
                    "output_dir": str(host.work_dir("unused", "text-to-image"))})
    st = host.jobs.wait(30)
    assert st["state"] == "failed" and "boom" in st["message"]
    assert model.device == "cuda" and not call_queue.queue_lock.locked()


def test_busy_webui_refuses_start(webui_host, dataset):
    from modules import call_queue, sd_models

    call_queue.queue_lock.acquire()  # txt2img is generating
    try:
        with pytest.raises(JobBusyError, match="busy generating"):
            webui_host.start_job(start_config(webui_host, dataset))
        assert sd_models.CALLS == [] and webui_host.jobs.status()["state"] == "idle"
    finally:
        call_queue.queue_lock.release()


def test_no_loaded_model_is_not_loaded_for_unloading(webui_host, dataset):
    import networks
    from modules import sd_models

    sd_models.model_data.sd_model = None
    webui_host.start_job(start_config(webui_host, dataset))
    st = webui_host.jobs.wait(30)
    assert st["state"] == "done"
    assert sd_models.CALLS == [] and not any(c[0] == "load_network" for c in networks.CALLS)  # no model loaded to check
    assert st["checks"][0].endswith("4/4 modules match tiny-sd1.safetensors (all keys match) (format-layer check)")


def test_webui_captioners(webui_host, uncaptioned_dataset, tmp_path):
    import shutil

    from extension.ui.handlers import Handlers

    data = tmp_path / "d"
    shutil.copytree(uncaptioned_dataset, data)
    h = Handlers(webui_host)
    assert webui_host.captioners() == ["BLIP (WebUI)", "DeepBooru (WebUI)"]
    assert h.auto_caption(str(data), "BLIP (WebUI)", False).startswith("captioned 1 image(s)")
    assert (data / "2_cat" / "img2.txt").read_text().strip() == "a photo 64x64"
    assert h.auto_caption(str(data), "DeepBooru (WebUI)", True).startswith("captioned 3 image(s)")
    assert (data / "2_cat" / "img0.txt").read_text().strip() == "1girl, solo"


def test_callbacks_register_tab_settings_and_api(fake_webui, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from modules import script_callbacks, shared

    from extension.webui import callbacks

    script_callbacks.clear_callbacks()
    callbacks.register()
    tabs = script_callbacks.ui_tabs_callback()
    assert [(t[1], t[2]) for t in tabs] == [("LoRA Training", "lora_training")]
    script_callbacks.ui_settings_callback()
    assert shared.opts.lora_bridge_free_vram is True
    assert shared.opts.data_labels["lora_bridge_default_preset"].section == ("lora_training", "LoRA Training")
    app = FastAPI()
    shared.cmd_opts.api_auth = "u:p"
    script_callbacks.app_started_callback(None, app)
    client = TestClient(app, base_url="http://127.0.0.1:7860")  # the WebUI runs without --listen
    assert client.get("/lora-bridge/v1/status").status_code == 401
    assert client.get("/lora-bridge/v1/status", auth=("u", "p")).status_code == 200
    shared.cmd_opts.api = False
    other = FastAPI()
    script_callbacks.app_started_callback(None, other)
    paths = [getattr(r, "path", "") for r in other.routes if "lora-bridge" in getattr(r, "path", "")]
    assert paths == ["/lora-bridge/tab/live"]  # no --api: only the tab's own live route


def test_concurrent_starts_only_one_wins(webui_host, dataset):
    results = []

    def go():
        try:
            webui_host.start_job(start_config(webui_host, dataset))
            results.append("ok")
        except JobBusyError:
            results.append("busy")

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    webui_host.jobs.wait(30)
    assert sorted(results) == ["busy", "busy", "busy", "ok"]


def test_webui_interrupt_button_does_not_stop_training(fake_webui, runner_factory, dataset, tiny_base):
    """#10.4: Interrupt on a txt2img queued behind the training job interrupts that txt2img, not the run."""
    from modules import shared

    from extension.webui.host import WebUIHost

    host = WebUIHost(jobs=JobManager(runner=runner_factory(steps=30, delay=0.02)))
    seen = []
    original = host.on_event

    def interrupt_then_forward(event):
        if event.step == 3:
            shared.state.interrupt()
        original(event)
        seen.append(event.step)

    host.on_event = interrupt_then_forward
    host.start_job({"base_model": str(tiny_base), "train_data_dir": str(dataset),
                    "output_dir": str(host.work_dir("intr", "text-to-image")), "output_name": "intr"})
    st = host.jobs.wait(30)
    assert st["state"] == "done" and st["step"] == 30 and max(seen) == 30



@pytest.mark.parametrize("hashed", [False, True])
def test_preselected_checkpoint_resolves_in_both_hosts(any_webui, tiny_base, dataset, runner_factory, hashed):
    """#10.1: the entry the tab pre-selects is found again at Start, also after the host hashed the file."""
    from modules import sd_models, shared

    from extension.ui.handlers import Handlers
    from extension.webui.host import WebUIHost

    sd_models.list_models([str(tiny_base)])
    info = sd_models.checkpoint_aliases["tiny-sd1.safetensors"]
    if hashed:  # what both hosts do at the first generation with the model
        info.calculate_shorthash()
        assert list(sd_models.checkpoints_list) == [f"tiny-sd1.safetensors [{info.shorthash}]"]
    shared.opts.data["sd_model_checkpoint"] = info.title
    host = WebUIHost(jobs=JobManager(runner=runner_factory(steps=2)))
    tile = host.current_checkpoint()
    assert tile in host.checkpoints()
    assert tile == (info.name if sd_models.FLAVOR == "forge" else info.title)
    assert host.checkpoint_path(tile) == str(tiny_base)
    h = Handlers(host)
    values = h.apply_preset("SD1.5")
    message = h.start(str(dataset), tile, "picked", *values)
    assert message.startswith("started training picked"), message
    assert host.jobs.wait(30)["state"] == "done"


def _webui_client(host):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extension.api import register

    app = FastAPI()
    register(app, host)
    return TestClient(app)


def test_bad_starts_are_refused_before_anything_is_touched(webui_host, dataset, uncaptioned_dataset, tmp_path,
                                                           tiny_gguf, tiny_lora, caplog):
    """#10.2: config, base and dataset are checked first: 400 + one line; no lock, unload, folder or state."""
    import logging

    from modules import call_queue, sd_models, shared

    client = _webui_client(webui_host)
    good = start_config(webui_host, dataset, name="refused")
    bad_inputs = {
        "missing dataset": ({**good, "train_data_dir": str(tmp_path / "nope")}, "nope"),
        "missing base": ({**good, "base_model": str(tmp_path / "gone.safetensors")}, "gone.safetensors"),
        "text model as image base": ({**good, "base_model": str(tiny_gguf)}, "not a Stable Diffusion checkpoint"),
        "a LoRA as image base": ({**good, "base_model": str(tiny_lora)}, "not a Stable Diffusion checkpoint"),
        "bad_data fail": ({**good, "train_data_dir": str(uncaptioned_dataset)}, "without caption"),
        "unknown key": ({**good, "lora_rnak": 4}, "lora_rank"),
    }
    shared.CALLS.clear()
    for label, (body, expected) in bad_inputs.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lora_bridge"):
            answer = client.post("/lora-bridge/v1/start", json=body)
        assert answer.status_code == 400, (label, answer.text)
        error = answer.json()["error"]
        assert expected in error and "\n" not in error, (label, error)
        assert [r.levelname for r in caplog.records] == ["WARNING"] and not caplog.records[0].exc_info, label
    malformed = client.post("/lora-bridge/v1/start", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
    assert sd_models.CALLS == [] and not call_queue.queue_lock.locked()  # nothing unloaded or locked
    assert not any(c[0] == "state.begin" for c in shared.CALLS)
    assert not (tmp_path / "outputs").exists()  # no run folder
    assert webui_host.jobs.status()["state"] == "idle"
    assert webui_host.last_output_name is None and webui_host.base_model is None


def test_refused_start_changes_no_tab_state(webui_host, dataset, tmp_path):
    """#10.3: after a finished run, a refused start leaves name, base and published files as they were."""
    from extension.ui.handlers import Handlers

    h = Handlers(webui_host)
    values = h.apply_preset("SD1.5")
    assert h.start(str(dataset), "tiny-sd1.safetensors", "kept", *values).startswith("started training kept")
    assert webui_host.jobs.wait(30)["state"] == "done"
    before = (webui_host.last_output_name, webui_host.base_model, list(webui_host.published), webui_host.task_type)
    assert before[2]  # published into the Lora folder
    refused = h.start(str(tmp_path / "missing"), "tiny-sd1.safetensors", "busy", *values)
    assert refused.startswith("⚠️") and "missing" in refused
    assert (webui_host.last_output_name, webui_host.base_model, list(webui_host.published),
            webui_host.task_type) == before
    assert h.lora_tag(webui_host.last_output_name, 0.7) == "<lora:kept:0.7>"


def test_published_lora_is_listed_at_once(any_webui, runner_factory, dataset, tiny_base, tiny_lora, tmp_path):
    """#10.5: training and Convert into the Lora folder re-list it (what /sdapi/v1/loras and the cards read)."""
    import networks
    from modules import sd_models

    from extension.ui.handlers import Handlers
    from extension.webui.host import WebUIHost

    sd_models.list_models([str(tiny_base)])
    host = WebUIHost(jobs=JobManager(runner=runner_factory(steps=2)))
    networks.list_available_networks()  # the WebUI's startup scan
    assert "listed" not in networks.available_networks
    host.start_job({"base_model": str(tiny_base), "train_data_dir": str(dataset), "output_name": "listed",
                    "output_dir": str(host.work_dir("listed", "text-to-image"))})
    assert host.jobs.wait(30)["state"] == "done"
    assert networks.available_networks["listed"].filename == str(host.lora_dir() / "listed.safetensors")
    h = Handlers(host)
    message = h.convert(str(tiny_lora), str(host.lora_dir() / "converted.safetensors"), "kohya", "", "", "", False)
    assert message.startswith("wrote") and "converted" in networks.available_networks, message


def test_text_adapters_never_reach_the_webui_loader(fake_webui, tiny_gguf, text_adapters):
    """#15.2: a GGUF or PEFT text adapter is checked against its base only; the WebUI's loader never opens it."""
    import networks

    from extension.ui.handlers import Handlers
    from extension.webui.host import WebUIHost

    gguf, peft = text_adapters
    host = WebUIHost(jobs=JobManager())
    host.base_model, host.task_type = str(tiny_gguf), "text-generation"
    for path in (gguf, peft):
        line = host.after_save(str(path))
        assert "modules match tiny-q8_0.gguf (all keys match)" in line, line
        checked = Handlers(host).check_file(str(path))
        assert "modules match tiny-q8_0.gguf" in checked and "WebUI Lora loader" not in checked, checked
    assert networks.CALLS == []


def _widget(blocks, elem_id):
    return next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id)


@pytest.mark.parametrize("preset", ["SDXL low-VRAM", "SD1.5"])
def test_settings_preset_category_and_labels(any_webui, preset):
    """#10.7: the tab starts with the preset chosen in Settings and the form holds its values; the section
    is in the Training category; the after-save label says what this host does."""
    from modules import script_callbacks, sd_models, shared

    from extension.ui.presets import PRESETS
    from extension.webui import callbacks

    script_callbacks.clear_callbacks()
    callbacks.register()
    script_callbacks.ui_settings_callback()
    labels = shared.opts.data_labels
    assert all(labels[k].section == ("lora_training", "LoRA Training") for k in labels if k.startswith("lora_bridge_"))
    # What the settings page shows (Options.dumpjson): the section under a "Training" heading in every host,
    # although Forge Neo's shared_options registers no such category.
    assert ["LoRA Training", "Training"] in json.loads(shared.opts.dumpjson())["_categories"]
    forge = sd_models.FLAVOR == "forge"
    assert ("Forge's Lora loader is not used" in labels["lora_bridge_check_with_loader"].label) == forge
    assert ("WebUI's Lora loader" in labels["lora_bridge_check_with_loader"].label) != forge
    shared.opts.data["lora_bridge_default_preset"] = preset
    tab = script_callbacks.ui_tabs_callback()[0][0]
    assert _widget(tab, "lora_bridge_img_resolution").value == PRESETS[preset]["resolution"]
    assert _widget(tab, "lora_bridge_img_optimizer").value == PRESETS[preset]["optimizer"]
    assert _widget(tab, "lora_bridge_img_lora_rank").label == "LoRA rank"


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_text_run_lock_follows_the_setting(fake_webui, runner_factory, tiny_gguf, tmp_path, mode):
    """#15.6: on CPU a text run (default "auto") leaves txt2img working: no queue lock, no unload,
    shared.state untouched; "always" makes it exclusive like an image run."""
    from modules import call_queue, sd_models, shared

    from extension.webui.host import WebUIHost

    shared.opts.data["lora_bridge_text_exclusive"] = mode
    host = WebUIHost(jobs=JobManager(runner=runner_factory(steps=20, delay=0.02)))
    seen = []
    original = host.on_event
    host.on_event = lambda event: (seen.append(call_queue.queue_lock.locked()), original(event))
    data = tmp_path / "t.txt"
    data.write_text("hello world\n" * 5)
    shared.CALLS.clear()
    host.start_job({"task_type": "text-generation", "base_model": str(tiny_gguf), "train_data_dir": str(data),
                    "output_name": "txt", "output_dir": str(tmp_path / "run")})
    assert host.jobs.wait(30)["state"] == "done"
    exclusive = mode == "always"
    assert all(seen) if exclusive else not any(seen)
    assert bool(sd_models.CALLS) == exclusive
    assert any(c[0] == "state.begin" for c in shared.CALLS) == exclusive
    assert not call_queue.queue_lock.locked()


def test_captioner_without_weights_says_so_in_one_line(webui_host, uncaptioned_dataset, tmp_path, monkeypatch):
    """#10.9: Forge offline: the interrogator fails inside (IndexError); the tab shows one line naming the CLI."""
    import shutil

    from modules import shared

    from extension.ui.handlers import Handlers

    def no_weights(pil_image):
        raise IndexError("list index out of range")

    monkeypatch.setattr(shared.interrogator, "generate_caption", no_weights)
    data = tmp_path / "d"
    shutil.copytree(uncaptioned_dataset, data)
    message = Handlers(webui_host).auto_caption(str(data), "BLIP (WebUI)", False)
    assert message.startswith("⚠️ BLIP (WebUI) could not run") and "\n" not in message
    assert "lora-bridge caption DIR --model LOCAL_DIR" in message and "IndexError" in message


# ---- Forge Neo (tests/webui/fake_neo) ----------------------------------------------------------------
def _no_other_tokenizer(monkeypatch):
    """No HF cache copy and no open_clip here: only a sidecar or the host's own files can serve."""
    from extension.models import tokenizers

    monkeypatch.setattr(tokenizers, "hf_cache_dir", lambda repo_id: None)
    monkeypatch.setattr(tokenizers, "open_clip_bpe_path", lambda: None)


def test_neo_trains_with_its_own_tokenizer(fake_neo, bare_base, dataset, runner_factory, tmp_path, monkeypatch):
    """#24.2: a checkpoint without tokenizer, in Neo (no open_clip): the run uses Neo's bundled copy."""
    from extension.models.sd_loader import load_sd_base
    from extension.webui.host import WebUIHost

    _no_other_tokenizer(monkeypatch)
    seen = {}

    def runner(cfg, callback, control):
        seen["tokenizer_path"] = cfg.tokenizer_path
        return runner_factory(steps=2)(cfg, callback, control)

    host = WebUIHost(jobs=JobManager(runner=runner))
    bundled = tmp_path / "backend" / "huggingface" / "runwayml" / "stable-diffusion-v1-5"
    assert host.tokenizer_dirs() == {"sd1": bundled, "sdxl": bundled.parents[1] / "stabilityai" /
                                     "stable-diffusion-xl-base-1.0",
                                     "flux": bundled.parents[1] / "black-forest-labs" / "FLUX.1-dev"}
    host.start_job({"base_model": str(bare_base), "train_data_dir": str(dataset), "output_name": "neo",
                    "output_dir": str(host.work_dir("neo", "text-to-image"))})
    assert host.jobs.wait(30)["state"] == "done"
    assert seen["tokenizer_path"] == str(bundled)
    base = load_sd_base(bare_base, tokenizer_path=seen["tokenizer_path"], parts=())  # what the engine then reads
    assert base.tokenizers[0]("cat").input_ids[1] == base.tokenizers[0].get_vocab()["cat</w>"]


def test_a_sidecar_tokenizer_wins_over_the_hosts(fake_neo, tiny_base, dataset, runner_factory, monkeypatch):
    from extension.ui.preflight import check_start
    from extension.webui.host import WebUIHost

    _no_other_tokenizer(monkeypatch)
    cfg, _ = check_start({"base_model": str(tiny_base), "train_data_dir": str(dataset), "output_name": "side"},
                         tokenizer_dirs=WebUIHost().tokenizer_dirs())
    assert cfg.tokenizer_path is None  # the loader finds tiny-sd1.tokenizer/ itself


def test_no_tokenizer_is_refused_at_start(any_webui, bare_base, dataset, runner_factory, tmp_path, monkeypatch):
    """#24.2: no tokenizer anywhere: REST 400 with one line at Start, nothing locked or started."""
    import shutil

    from modules import call_queue, paths, sd_models

    from extension.webui.host import WebUIHost

    _no_other_tokenizer(monkeypatch)
    shutil.rmtree(Path(paths.script_path) / "backend", ignore_errors=True)  # a host without bundled tokenizers
    host = WebUIHost(jobs=JobManager(runner=runner_factory(steps=2)))
    answer = _webui_client(host).post("/lora-bridge/v1/start", json={
        "base_model": str(bare_base), "train_data_dir": str(dataset), "output_name": "notok"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "no CLIP tokenizer available offline" in error and "tokenizer_path" in error and "\n" not in error
    assert host.jobs.status()["state"] == "idle" and not call_queue.queue_lock.locked() and sd_models.CALLS == []


def test_neo_dataset_gallery_needs_no_temp_folder(fake_neo, dataset, tmp_path, monkeypatch):
    """#24.3: Neo hands every PIL image gradio gets to opts.temp_dir (data_path/tmp, absent after
    ``python launch.py``): the gallery gets LoRA Bridge's own thumbnail files instead."""
    from modules import shared, ui_tempdir

    from extension.ui import compat
    from extension.ui.handlers import Handlers
    from extension.webui.host import WebUIHost

    if compat.major() >= 4:  # Neo runs gradio 4.40: its override of gradio's PIL saving is in force
        import gradio.processing_utils

        monkeypatch.setattr(gradio.processing_utils, "save_pil_to_cache", gradio.processing_utils.save_pil_to_cache)
        ui_tempdir.install_ui_tempdir_override()  # undone by monkeypatch
    host = WebUIHost(jobs=JobManager())
    gallery, summary, _, _ = Handlers(host).load_dataset(str(dataset))
    value = compat.make("Gallery").postprocess(gallery)  # what gradio does with the handler's value
    assert len(value.root if hasattr(value, "root") else value) == 3 and summary.startswith("3 image(s)")
    assert not Path(shared.opts.temp_dir).exists()
    for item, caption in gallery:
        assert isinstance(item, str) and Path(item).is_file() and host.cache_dir() in Path(item).parents, item
        assert caption.startswith("a cat number")
    made = [Path(p).stat().st_mtime_ns for p, _ in gallery]
    again, _, _, _ = Handlers(host).load_dataset(str(dataset))
    assert again == gallery and [Path(p).stat().st_mtime_ns for p, _ in again] == made  # made once
    assert sorted(p.name for p in Path(gallery[0][0]).parent.iterdir()) == sorted(Path(p).name for p, _ in gallery)


def test_neo_caption_offers_what_it_has(fake_neo, uncaptioned_dataset):
    """#24.5: no BLIP/DeepBooru in Neo: no empty dropdown; the tab and the button's message name the CLI captioner."""
    from extension.ui.handlers import Handlers
    from extension.ui.tab import build_tab
    from extension.webui.host import WebUIHost

    host = WebUIHost(jobs=JobManager())
    assert host.captioners() == []
    tab = build_tab(host)
    hint = _widget(tab, "lora_bridge_caption_hint")
    assert "lora-bridge caption DIR --model LOCAL_DIR" in hint.value and "BLIP or DeepBooru" in hint.value
    dropdowns = [b for b in tab.blocks.values() if getattr(b, "label", None) == "Auto-caption with"]
    assert len(dropdowns) == 1 and dropdowns[0].visible is False
    message = Handlers(host).auto_caption(str(uncaptioned_dataset), "", False)
    assert "lora-bridge caption DIR --model LOCAL_DIR" in message and "choose BLIP" not in message


def test_a1111_still_offers_blip_and_deepbooru(fake_webui):
    from extension.ui.tab import build_tab
    from extension.webui.host import BLIP, DEEPBOORU, WebUIHost

    tab = build_tab(WebUIHost(jobs=JobManager()))
    dropdown = next(b for b in tab.blocks.values() if getattr(b, "label", None) == "Auto-caption with")
    assert dropdown.visible is not False and [c[0] if isinstance(c, tuple) else c for c in dropdown.choices] == [
        BLIP, DEEPBOORU]
    assert not any(getattr(b, "elem_id", None) == "lora_bridge_caption_hint" for b in tab.blocks.values())


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_try_holds_the_queue_only_as_a_text_run_would(webui_host, mode):
    """#23: on CPU ("auto") Try generates beside txt2img; "always" (or a GPU) holds the queue, frees VRAM, restores."""
    from modules import call_queue, sd_models, shared

    shared.opts.data["lora_bridge_text_exclusive"] = mode
    with webui_host.generation_slot(on_gpu=False):
        assert call_queue.queue_lock.locked() == (mode == "always")
        assert bool(sd_models.CALLS) == (mode == "always")
    assert not call_queue.queue_lock.locked()
    assert [c[0] for c in sd_models.CALLS] == (["unload_model_weights", "send_model_to_device"] if mode == "always"
                                               else [])
    shared.opts.data["lora_bridge_text_exclusive"] = "auto"
    call_queue.queue_lock.acquire()  # the WebUI is generating
    try:
        with webui_host.generation_slot(on_gpu=False):
            pass  # on the CPU Try does not wait for it
        with pytest.raises(JobBusyError, match="busy generating"), webui_host.generation_slot(on_gpu=True):
            pass
    finally:
        call_queue.queue_lock.release()
