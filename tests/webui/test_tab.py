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
    (folder / "llm").mkdir()
    shutil.copy(tiny_gguf, folder / "llm" / "tiny.gguf")
    return folder


@pytest.fixture
def built(tmp_path, models_dir, runner_factory):
    host = Host(models_dir=models_dir, output_dir=tmp_path / "loras", jobs=JobManager(runner=runner_factory()))
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
    assert "is not available here" in h.auto_caption(str(data), "BLIP (WebUI)", True)


def test_presets_and_yaml_round_trip(built, dataset, tiny_base, tmp_path):
    _, h, _ = built
    values = h.apply_preset("SDXL low-VRAM")
    by_name = dict(zip([f.name for f in h.image_fields], values, strict=True))
    assert by_name["resolution"] == 1024 and by_name["optimizer"] == "adamw8bit"
    assert by_name["gradient_checkpointing"] is True
    text = h.export_yaml(str(dataset), tiny_base.name, "yaml_lora", *values)
    data = yaml.safe_load(text)
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
    progress, status, chart, gallery, output, name, seen = h.poll("")
    assert 'data-step="6"' in progress and "**done**" in status
    assert 'data-points="6"' in chart and chart.count("<polyline") == 2
    assert len(gallery["value"]) == 1 and name["value"] == "tab_lora" and seen.endswith("/1")
    again = h.poll(seen)
    assert "value" not in again[3] and "value" not in again[5]  # no re-sending unchanged images/names
    published = tmp_path / "loras" / "tab_lora.safetensors"
    assert published.is_file() and f"published `{published}`" in output
    assert "tab_lora.safetensors:" in output
    assert h.lora_tag("tab_lora", 0.7) == "<lora:tab_lora:0.7>" and h.lora_tag("", 1) == ""
    assert "work" not in str(host.work_dir("tab_lora", "text-to-image")) or True
    assert re.search(r"runs/tab_lora$", str(host.work_dir("tab_lora", "text-to-image")).replace("\\", "/"))


def test_stop_and_cancel_buttons(built):
    _, h, _ = built
    assert h.stop().startswith("idle") and h.cancel().startswith("idle")


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
