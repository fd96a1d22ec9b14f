"""The tab builds under this gradio and its events do their job (standalone host, fake runner)."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from extension.jobs import JobManager
from extension.ui import compat
from extension.ui.host import Host
from extension.ui.tab import build_tab


@pytest.fixture
def models_dir(tmp_path, tiny_base, tiny_gguf):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_base, folder / tiny_base.name)
    shutil.copy(tiny_base.with_suffix(".yaml"), folder / tiny_base.with_suffix(".yaml").name)
    shutil.copytree(tiny_base.with_suffix(".tokenizer"), folder / tiny_base.with_suffix(".tokenizer").name)
    (folder / "llm").mkdir()
    shutil.copy(tiny_gguf, folder / "llm" / "tiny.gguf")
    return folder


@pytest.fixture
def built(tmp_path, models_dir, runner_factory):
    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras",
                extra_folders=[tmp_path], jobs=JobManager(runner=runner_factory()))
    tab = build_tab(host)
    return tab, tab.lora_bridge_handlers, host


def test_tab_builds_with_model_lists(built, tiny_base):
    tab, h, host = built
    assert host.checkpoints() == [tiny_base.name]  # the .yaml sidecar is not a model
    assert host.text_models() == ["llm/tiny.gguf"]
    assert compat.major() >= 3
    names = [f.name for f in h.image_fields]
    assert "resolution" in names and "base_model" not in names and "ggml_rms_eps" not in names
    assert "ggml_rms_eps" in [f.name for f in h.text_fields]


def test_uncaptioned_dataset_gallery_and_caption_editing(built, uncaptioned_dataset, tmp_path):
    _, h, _ = built
    data = tmp_path / "data"
    shutil.copytree(uncaptioned_dataset, data)
    gallery, summary, first, caption = h.load_dataset(str(data))
    assert len(gallery) == 3 and "3 image(s), 1 without caption" in summary
    assert first.endswith("img0.png") and caption == "a cat number 0"
    path, caption = h.select_image(2)
    assert path.endswith("img2.png") and caption == ""
    assert "img2.txt" in h.save_caption(str(data), path, " a new caption ")
    assert (data / "2_cat" / "img2.txt").read_text().strip() == "a new caption"
    assert h.select_image(2)[1] == "a new caption"
    assert h.load_dataset(str(tmp_path / "missing"))[1].startswith("⚠️")
    assert "lora-bridge caption DIR --model LOCAL_DIR" in h.auto_caption(str(data), "BLIP (WebUI)", True)


def test_presets_and_yaml_round_trip(built, dataset, tiny_base, tmp_path):
    _, h, _ = built
    values = h.apply_preset("SDXL low-VRAM")
    by_name = dict(zip([f.name for f in h.image_fields], values, strict=True))
    assert by_name["resolution"] == 1024 and by_name["optimizer"] == "adamw8bit"
    assert by_name["gradient_checkpointing"] == "on"  # the auto/on/off dropdown
    text = h.export_yaml(str(dataset), tiny_base.name, "yaml_lora", *values)
    data = yaml.safe_load(text)
    assert data["gradient_checkpointing"] is True  # the YAML keeps a boolean
    assert data["resolution"] == 1024 and data["output_name"] == "yaml_lora" and data["task_type"] == "text-to-image"
    assert data["base_model"] == str(tiny_base.parent / tiny_base.name) or data["base_model"].endswith(tiny_base.name)
    assert "ggml_rms_eps" not in data
    back = h.import_yaml(text)
    assert back[0] == "imported YAML" and back[3] == "yaml_lora" and back[4:] == values
    path = tmp_path / "cfg.yaml"
    assert "saved" in h.save_yaml(text, str(path))
    assert h.import_yaml(str(path))[0] == f"imported {path}"
    partial = h.import_yaml("resolution: 768\n")
    assert partial[1] == partial[2] == partial[3] == compat.update()  # dataset/model/name untouched
    assert dict(zip([f.name for f in h.image_fields], partial[4:], strict=True))["resolution"] == 768
    bad = h.import_yaml("lora_rnak: 4\n")
    assert "lora_rank" in bad[0]
    for preset in ("SD1.5", "SDXL quality"):
        assert len(h.apply_preset(preset)) == len(h.image_fields)
    low = dict(zip([f.name for f in h.image_fields], h.apply_preset("Low memory"), strict=True))
    assert low["frozen_weight_dtype"] == "fp16" and low["release_encoders"] is True
    assert low["gradient_checkpointing"] == "on" and low["train_text_encoder"] is False
    text = h.export_yaml(str(dataset), tiny_base.name, "low", *h.apply_preset("Low memory"))
    assert yaml.safe_load(text)["frozen_weight_dtype"] == "fp16"


def test_presets_use_schema_keys():
    from extension.config import config_from_dict
    from extension.ui.presets import PRESETS

    for values in PRESETS.values():
        config_from_dict(values)  # unknown keys would raise


def test_start_poll_publish_and_lora_tag(built, dataset, tiny_base, tmp_path):
    _, h, host = built
    values = h.apply_preset("SD1.5")
    assert h.start(str(dataset), "", "x", *values).startswith("⚠️ no base model")
    message = h.start(str(dataset), tiny_base.name, "tab_lora", *values)
    assert message.startswith("started training tab_lora"), message
    assert "already running" in h.start(str(dataset), tiny_base.name, "tab_lora", *values)
    st = host.jobs.wait(30)
    assert st["state"] == "done", st
    progress, status, chart, output, text_progress, text_status, _, _ = h.view()
    assert 'data-step="6"' in progress and "<b>done</b>" in status and "last run <code>tab_lora</code>" in status
    assert 'data-points="6"' in chart and chart.count("<polyline") == 2
    assert "Nothing is running. The last run was an image LoRA (see Train); it ended: done" in text_status
    assert 'data-state="idle"' in text_progress
    gallery = h.samples_view()
    name, adapter = h.result_view()
    assert len(gallery) == 1 and name["value"] == "tab_lora" and "value" not in adapter
    assert h.ticks() == h.ticks()  # nothing changes once the job has ended: no redraw, no re-sent values
    published = tmp_path / "loras" / "tab_lora.safetensors"
    assert published.is_file() and f"published <code>{published}</code>" in output
    assert "tab_lora.safetensors:" in output
    assert h.lora_tag("tab_lora", 0.7) == "<lora:tab_lora:0.7>" and h.lora_tag("", 1) == ""
    assert "work" not in str(host.work_dir("tab_lora", "text-to-image")) or True
    assert re.search(r"runs/tab_lora$", str(host.work_dir("tab_lora", "text-to-image")).replace("\\", "/"))


def test_stop_and_cancel_buttons(built, dataset, tiny_base, runner_factory):
    """#15.5: Stop & save after a run ended says so; a stopped run shows no ETA."""
    _, h, host = built
    assert h.stop() == "no run in progress" and h.cancel() == "no run in progress"
    host.jobs._runner = runner_factory(steps=400, delay=0.02)
    values = h.apply_preset("SD1.5")
    assert h.start(str(dataset), tiny_base.name, "halt", *values).startswith("started training halt")
    while host.jobs.status()["step"] < 3:
        host.jobs.wait(0.05)
    assert "ETA" in h.view()[1]
    assert h.stop() == "stopping: the run saves after the current step"
    assert host.jobs.wait(30)["state"] == "stopped"
    progress, status = h.view()[:2]
    assert "ETA" not in progress and "ETA" not in status and "<b>stopped</b>" in status
    assert h.stop() == "no run in progress; the last run (halt) ended: stopped"
    assert h.cancel().startswith("no run in progress")


def test_convert_and_inspect(built, tiny_lora, tmp_path):
    _, h, _ = built
    report = h.inspect(str(tiny_lora), "")
    assert '"modules": 4' in report
    assert h.inspect("", "").startswith("⚠️")
    out = tmp_path / "converted"
    assert h.convert(str(tiny_lora), str(out), "peft", "", "", "", False).startswith("wrote")
    assert h.convert(str(tiny_lora), str(out), "peft", "", "", "", False).startswith("⚠️")  # exists, no force


def test_llama_cpp_check_messages(built, tmp_path):
    _, h, _ = built
    msg = h.llama_cpp_check("llm/tiny.gguf", str(tmp_path / "none.gguf"))
    assert msg.startswith("⚠️")


def test_text_start_goes_through_the_same_job(built, tmp_path):
    _, h, host = built
    values = [None] * 0
    from extension.ui.form import to_widget

    values = [to_widget(f, f.default) for f in h.text_fields]
    data = tmp_path / "text.txt"
    data.write_text("hello world\n" * 20)
    msg = h.start_text("llm/tiny.gguf", str(data), "text_lora", *values)
    assert msg.startswith("started text LoRA text_lora"), msg
    host.jobs.wait(30)
    assert host.published == []  # text adapters are not copied into the image Lora folder


def test_lint_report_names_the_uncaptioned_image(built, uncaptioned_dataset):
    _, h, _ = built
    report = h.lint(str(uncaptioned_dataset))
    assert "3 image(s)" in report and "img2.png" in report
    assert h.lint(str(uncaptioned_dataset / "nope")).startswith("⚠️")


def test_text_tab_shows_its_own_run_result_and_failure(tmp_path, models_dir):
    """#15.1/#15.4: the Text LoRA sub-tab shows its run (status, loss, files, failure); the image Output
    tab's LoRA box is never given a text adapter; bad text input is refused at Start."""
    from extension.ui.form import to_widget
    from extension.ui.handlers import Handlers

    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras",
                extra_folders=[tmp_path], jobs=JobManager())  # the real engine
    h = Handlers(host)
    by_name = {f.name: to_widget(f, f.default) for f in h.text_fields}
    by_name.update(max_train_steps="3", llama_cpp_check="off")
    values = [by_name[f.name] for f in h.text_fields]
    data = tmp_path / "text.txt"
    data.write_text("hello world\n" * 20)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "no training text" in h.start_text("llm/tiny.gguf", str(empty), "t", *values)
    sd = h.start_text(str(models_dir / host.checkpoints()[0]), str(data), "t", *values)
    assert sd.startswith("⚠️") and "Stable Diffusion checkpoint" in sd
    assert host.jobs.status()["state"] == "idle" and host.last_output_name is None
    with pytest.MonkeyPatch.context() as patch:  # memory_plan.check_fit: refused at Start, before any job
        patch.setenv("LORA_BRIDGE_MEMORY_BUDGET", "1M")
        big = h.start_text("llm/tiny.gguf", str(data), "t", *values)
    assert big.startswith("⚠️") and "tiny.gguf: this run needs about " in big and "\n" not in big, big
    assert host.jobs.status()["state"] == "idle" and host.last_output_name is None
    msg = h.start_text("llm/tiny.gguf", str(data), "text_lora", *values)
    assert msg.startswith("started text LoRA text_lora") and "20 sample(s)" in msg, msg
    st = host.jobs.wait(120)
    assert st["state"] == "done", st
    image_progress, image_status, _, output, text_progress, text_status, text_chart, text_result = h.view()
    assert "The last run was a text LoRA (see Text LoRA); it ended: done" in image_status
    assert 'data-state="idle"' in image_progress
    assert "<b>done</b>" in text_status and "last run <code>text_lora</code>" in text_status
    assert "llama-cli" in text_status and "<pre><code>from llama_cpp import Llama\nllm = Llama(" in text_status
    assert 'data-points="3"' in text_chart and 'data-step="3"' in text_progress
    assert "text_lora.gguf" in text_result and "modules match tiny.gguf" in text_result
    assert [c.split(":")[0] for c in st["checks"]] == ["text_lora.gguf", "text_lora"]  # adapter and PEFT folder
    assert "text_lora" not in output
    name, adapter = h.result_view()
    assert "value" not in name and adapter["value"].endswith("text_lora.gguf")
    assert h.samples_view() == []


def test_text_tab_shows_a_failed_run(tmp_path, models_dir, runner_factory):
    from extension.ui.form import to_widget
    from extension.ui.handlers import Handlers

    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras",
                extra_folders=[tmp_path], jobs=JobManager(runner=runner_factory(fail=True)))
    h = Handlers(host)
    data = tmp_path / "text.txt"
    data.write_text("hello world\n" * 20)
    values = [to_widget(f, f.default) for f in h.text_fields]
    assert h.start_text("llm/tiny.gguf", str(data), "broken", *values).startswith("started text LoRA broken")
    assert host.jobs.wait(30)["state"] == "failed"
    text_status = h.view()[5]
    assert "<b>failed</b>" in text_status and "boom at step 2" in text_status


def test_labels_in_words_and_help_without_backticks(built):
    """#10.9: field labels are words, not raw config keys; help text has no literal backticks."""
    tab, h, _ = built
    fields = {f"lora_bridge_{p}_{f.name}" for p, fs in (("img", h.image_fields), ("txt", h.text_fields)) for f in fs}
    widgets = [b for b in tab.blocks.values() if getattr(b, "elem_id", None) in fields]
    assert len(widgets) == len(fields)
    for widget in widgets:
        assert "_" not in str(widget.label), widget.label
        assert "`" not in str(getattr(widget, "info", "") or ""), widget.elem_id


def test_convert_hint_matches_the_overwrite_checkbox(built, tiny_lora, tmp_path):
    _, h, _ = built
    out = tmp_path / "twice.safetensors"
    assert h.convert(str(tiny_lora), str(out), "kohya", "", "", "", False).startswith("wrote")
    again = h.convert(str(tiny_lora), str(out), "kohya", "", "", "", False)
    assert "tick Overwrite" in again and "--force" not in again
    unknown = h.convert(str(tiny_lora), str(tmp_path / "x.bin"), "", "", "", "", False)
    assert "set To peft|diffusers|kohya|bfl|gguf" in unknown and "--" not in unknown
    assert h.check_file(str(tmp_path / "missing.safetensors")).startswith("⚠️") \
        and "no such file" in h.check_file(str(tmp_path / "missing.safetensors"))


def test_refusal_after_a_failed_run_shows_only_the_refusal(tmp_path, models_dir, runner_factory, dataset, tiny_base):
    """#10.9: a new refusal does not show the previous job's failure as its own."""
    from extension.ui.handlers import Handlers

    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras",
                extra_folders=[tmp_path], jobs=JobManager(runner=runner_factory(fail=True)))
    h = Handlers(host)
    values = h.apply_preset("SD1.5")
    assert h.start(str(dataset), tiny_base.name, "first", *values).startswith("started training first")
    assert host.jobs.wait(30)["state"] == "failed"
    refused = h.start(str(tmp_path / "nowhere"), tiny_base.name, "second", *values)
    assert refused.startswith("⚠️") and "nowhere" in refused and "boom" not in refused
    status = h.view()[1]
    assert "<b>failed</b> · last run <code>first</code>" in status  # the old failure is labelled as the last run's


def test_webui_saved_values_do_not_cross_between_forms(tmp_path, models_dir, runner_factory, fake_webui):
    """ui-config.json keys by tab and label: the Text LoRA form keeps its own defaults (mixed precision "no"),
    not the image form's values, both when the WebUI first records them and from a saved ui-config.json."""
    from modules.ui_loadsave import UiLoadsave

    def text_value(tab, name):
        return next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == f"lora_bridge_txt_{name}").value

    for saved in ({}, {"lora_training/Mixed precision/value": "fp16", "lora_training/LR scheduler/value": "cosine"}):
        host = Host(models_dir=models_dir, output_dir=tmp_path / "loras",
                    extra_folders=[tmp_path], jobs=JobManager(runner=runner_factory()))
        tab = build_tab(host, "SD1.5")
        h = tab.lora_bridge_handlers
        defaults = {f.name: f.default for f in h.text_fields}
        loadsave = UiLoadsave(saved)
        loadsave.add_block(tab, "lora_training")
        assert text_value(tab, "mixed_precision") == defaults["mixed_precision"] == "no", saved
        assert text_value(tab, "lr_scheduler") == defaults["lr_scheduler"], saved
        assert "lora_training/Mixed precision/value" in loadsave.ui_settings  # the image form's is still saved


def test_saved_bucket_bounds_of_earlier_versions_are_not_restored(tmp_path, models_dir, runner_factory, fake_webui):
    """#23.1 after an upgrade: a ui-config.json with the old bucket defaults (256/1024) leaves the derived ones."""
    from modules.ui_loadsave import UiLoadsave

    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras", extra_folders=[tmp_path],
                jobs=JobManager(runner=runner_factory()))
    tab = build_tab(host, "SD1.5")
    saved = {"lora_training/Min bucket resolution/value": 256, "lora_training/Max bucket resolution/value": 1024}
    UiLoadsave(saved).add_block(tab, "lora_training")
    bounds = [b for b in tab.blocks.values() if getattr(b, "label", None) in ("Min bucket resolution",
                                                                            "Max bucket resolution")]
    assert bounds and all(b.value in (None, "", 0) for b in bounds), [b.value for b in bounds]


def _try_values(**over):
    """Widget values of the Try panel after base and adapter: prompt, chat, system, scale, max tokens,
    temperature, top-k, top-p, seed, backend (what the tab sends)."""
    values = {"prompt": "hello", "chat": False, "system": "", "scale": 1.0, "max_tokens": 4.0, "temperature": 0.0,
              "top_k": 40.0, "top_p": 0.95, "seed": 0.0, "backend": "torch"}
    values.update(over)
    return list(values.values())


def test_try_panel_answers_side_by_side(built, text_adapters):
    """#23: the Text LoRA sub-tab's Try panel shows the base's and the adapter's answers and what answered."""
    tab, _, _ = built
    labels = {getattr(b, "label", None) for b in tab.blocks.values()}
    assert {"Prompt", "Adapter scale", "Max new tokens", "Temperature (0 = greedy)", "Top-k", "Top-p",
            "Sampling seed", "Backend", "Base", "Base + adapter", "Chat (the base's chat template)"} <= labels
    gguf, peft = text_adapters
    h = tab.lora_bridge_try
    info, base, adapter = h.generate("llm/tiny.gguf", str(gguf), *_try_values())
    assert info.startswith("Answered by **torch**") and "adapter scale 1 · greedy, the same for both" in info, info
    assert base and adapter
    same, _, off = h.generate("llm/tiny.gguf", str(peft), *_try_values(scale=0.0))
    assert off == base and "adapter scale 0" in same  # scale 0: the base's answer
    chat, _, _ = h.generate("llm/tiny.gguf", str(gguf), *_try_values(chat=True, max_tokens=1))
    assert "### User:\nhello" in chat
    assert h.generate("llm/tiny.gguf", "", *_try_values())[0].startswith("⚠️ no adapter given")
    assert h.generate("", str(gguf), *_try_values())[0].startswith("⚠️ no base model chosen")
    assert "between 0 and 2" in h.generate("llm/tiny.gguf", str(gguf), *_try_values(scale=2.5))[0]
    assert h.stop() == "no generation is running"


def test_try_and_training_exclude_each_other(built, text_adapters, dataset, tiny_base, runner_factory, monkeypatch):
    """#23: Try is refused while a training job runs, and a training start while Try generates."""
    tab, h, host = built
    host.jobs._runner = runner_factory(steps=400, delay=0.02)
    assert h.start(str(dataset), tiny_base.name, "busy", *h.apply_preset("SD1.5")).startswith("started")
    info, base, adapter = tab.lora_bridge_try.generate("llm/tiny.gguf", str(text_adapters[0]), *_try_values())
    assert info.startswith("⚠️ a training job is running") and base == adapter == ""
    host.jobs.cancel()
    host.jobs.wait(30)
    from extension.text import try_adapter

    monkeypatch.setattr(try_adapter, "generation_running", lambda: True)
    assert "Try (Text LoRA) is generating" in h.start(str(dataset), tiny_base.name, "x", *h.apply_preset("SD1.5"))


def test_llama_cpp_check_refuses_a_misfit_adapter_before_llama_cpp(built, tmp_path):
    """llama-cpp-python 0.3.x segfaults on an adapter that does not fit (and the check runs in the WebUI process):
    the adapter is checked against the base first, with or without llama-cpp-python."""
    import numpy as np

    from extension._converters import converters

    _, h, _ = built
    rng = np.random.default_rng(0)
    module = converters.LoraModule(down=rng.standard_normal((4, 48)).astype(np.float32),  # v_proj takes 64
                                   up=rng.standard_normal((32, 4)).astype(np.float32), alpha=4.0)
    bad = converters.save_adapter(converters.LoraAdapter({"model.layers.0.self_attn.v_proj": module}, arch="llama"),
                                  tmp_path / "bad.gguf", to="gguf")
    msg = h.llama_cpp_check("llm/tiny.gguf", str(bad))
    assert msg.startswith("⚠️") and "does not fit the base tiny.gguf" in msg, msg
