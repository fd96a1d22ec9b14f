"""The shared config schema: YAML round trip, seed keys, suggestions, overrides, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extension.config import (
    FIELDS,
    TrainConfig,
    apply_overrides,
    check_output_name,
    config_from_dict,
    config_to_dict,
    config_warnings,
    dump_config_yaml,
    fields_for_task,
    load_config,
    require_keys,
    schema,
)
from extension.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

SEED_YAML = """\
train_data_dir: data/imgs
metadata_path: data/imgs/metadata.csv
base_model: models/v1-5.safetensors
task_type: text-to-image
lora_rank: 4
lora_alpha: 2
unet_target_modules: [to_q, to_v]
batch_size: 2
epochs: 3
learning_rate: 1e-4
output_dir: out
save_steps: 50
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_keys_work_as_written(tmp_path):
    cfg = load_config(write(tmp_path, SEED_YAML))
    assert cfg.train_data_dir == "data/imgs"
    assert cfg.metadata_path == "data/imgs/metadata.csv"
    assert cfg.base_model == "models/v1-5.safetensors"
    assert cfg.task_type == "text-to-image"
    assert (cfg.lora_rank, cfg.lora_alpha) == (4, 2.0)
    assert cfg.unet_target_modules == ["to_q", "to_v"]
    assert (cfg.batch_size, cfg.epochs, cfg.save_steps) == (2, 3, 50)
    assert cfg.learning_rate == pytest.approx(1e-4)  # PyYAML reads 1e-4 as a string
    assert cfg.output_dir == "out"
    require_keys(cfg)


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = load_config(write(tmp_path, SEED_YAML), ["sample_prompts=[a cat, 'a dog, smiling']", "resume=auto",
                                                    "optimizer_args={d_coef: 2}",
                                                    "min_snr_gamma=5", "text_encoder_lr=5e-5"])
    text = dump_config_yaml(cfg)
    again = load_config(write(tmp_path, text, "again.yaml"))
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(yaml.safe_load(dump_config_yaml(TrainConfig()))) == TrainConfig()


def test_only_task_dump_drops_other_task_keys():
    text = dump_config_yaml(TrainConfig(), only_task=True)
    data = yaml.safe_load(text)
    assert "unet_target_modules" in data and "ggml_rms_eps" not in data
    assert config_from_dict(data) == TrainConfig()
    assert "lora_target_modules" in fields_for_task("text-generation")


def test_every_field_documented():
    for spec in schema():
        assert spec.doc.strip(), spec.name
        assert spec.group in ("common", "image", "text")
    assert len(schema()) == len(FIELDS)


@pytest.mark.parametrize(("key", "suggested"), [
    ("lora_rnak", "lora_rank"), ("learning_rte", "learning_rate"), ("train_dir", "train_data_dir"),
    ("unet_targets", "unet_target_modules"), ("epoch", "epochs")])
def test_unknown_key_suggests_nearest(tmp_path, key, suggested):
    path = write(tmp_path, f"{key}: 1\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and f"did you mean '{suggested}'" in msg and "\n" not in msg


def test_kohya_alias_and_conflict():
    assert config_from_dict({"network_dim": 32, "train_batch_size": 4}).lora_rank == 32
    with pytest.raises(UserError, match="'network_dim' and 'lora_rank' both set lora_rank"):
        config_from_dict({"lora_rank": 8, "network_dim": 32}, "x.yaml")


def test_set_overrides_use_yaml_typing(tmp_path):
    cfg = load_config(write(tmp_path, SEED_YAML), ["lora_rank=8", "flip_aug=true", "learning_rate=3e-4",
                                                    "max_train_steps=", "network_alpha=4", "output_name=my lora"])
    assert cfg.lora_rank == 8 and cfg.flip_aug is True and cfg.learning_rate == pytest.approx(3e-4)
    assert cfg.max_train_steps is None and cfg.lora_alpha == 4.0 and cfg.output_name == "my lora"
    cfg = apply_overrides(cfg, ["optimizer_args={d_coef: 0.5, safeguard_warmup: true}", "trigger_word=a: b"])
    assert cfg.optimizer_args == {"d_coef": 0.5, "safeguard_warmup": True} and cfg.trigger_word == "a: b"
    with pytest.raises(UserError, match="did you mean 'lora_rank'"):
        apply_overrides(cfg, ["lora_rak=3"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides(cfg, ["lora_rank"])


@pytest.mark.parametrize(("data", "fragment"), [
    ({"lora_rank": "big"}, "'lora_rank' must be an integer"),
    ({"lora_rank": 2.5}, "'lora_rank' must be an integer"),
    ({"lora_rank": True}, "'lora_rank' must be an integer"),
    ({"learning_rate": "fast"}, "'learning_rate' must be a number"),
    ({"flip_aug": "maybe"}, "'flip_aug' must be true or false"),
    ({"optimizer": "sgd"}, "must be one of adamw, adamw8bit, prodigy, adafactor"),
    ({"task_type": "image"}, "must be one of text-to-image, text-generation"),
    ({"batch_size": 0}, "must be at least 1"),
    ({"caption_dropout_rate": 1.5}, "must be at most 1"),
    ({"sample_prompts": {"a": 1}}, "must be a list of strings"),
    ({"optimizer_args": [1, 2]}, "must be a mapping"),
    ({"epochs": None}, "'epochs' must not be empty"),
    ({"min_bucket_reso": 1024, "max_bucket_reso": 512}, "larger than max_bucket_reso"),
    ({"resolution": 500}, "multiple of 8"),
])
def test_bad_values_rejected(data, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")) as err:
        config_from_dict(data, "bad.yaml")
    assert str(err.value).startswith("bad.yaml: ")


def test_bare_on_off_choices_survive_yaml(tmp_path):
    # YAML 1.1 reads `llama_cpp_check: off` as False; the choice must still be "off"
    cfg = load_config(write(tmp_path, SEED_YAML + "llama_cpp_check: off\n"), ["task_type=text-generation"])
    assert cfg.llama_cpp_check == "off"
    assert apply_overrides(cfg, ["llama_cpp_check=on"]).llama_cpp_check == "on"


def test_choices_are_normalised():
    cfg = config_from_dict({"lr_scheduler": "cosine-with-restarts", "mixed_precision": "BF16"})
    assert cfg.lr_scheduler == "cosine_with_restarts" and cfg.mixed_precision == "bf16"


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", ".hidden", "bad\x07name", "con:x", " ", ""])
def test_output_name_with_path_parts_rejected(name):
    with pytest.raises(UserError, match="output_name"):
        config_from_dict({"output_name": name}, "x.yaml")


def test_output_name_drops_extension():
    assert check_output_name("my_lora.safetensors") == "my_lora"
    assert config_from_dict({"output_name": "style-v2"}).output_name == "style-v2"


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="YAML error at line 3"):
        load_config(write(tmp_path, "lora_rank: 4\nbad: [unclosed\n"))
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    assert load_config(write(tmp_path, "")) == TrainConfig()


def test_require_keys():
    with pytest.raises(UserError, match="'base_model' is not set"):
        require_keys(TrainConfig(train_data_dir="x"))


def test_warnings_for_settings_that_do_nothing():
    cfg = config_from_dict({"lora_dropout": 0.1, "max_length": 64, "text_encoder_lr": 1e-5, "epochs": 5,
                            "max_train_steps": 100})
    warnings = config_warnings(cfg)
    assert any("ignored for task_type text-to-image: max_length" in w for w in warnings)
    assert any("text_encoder_lr" in w for w in warnings)
    assert any("epochs=5 is ignored" in w for w in warnings)
    assert config_warnings(TrainConfig()) == []


@pytest.mark.parametrize("name", ["sd15_example.yaml", "sdxl_example.yaml", "text_example.yaml",
                                  "lora_scripts_image.yaml", "lora_scripts_text.yaml"])
def test_example_configs_load_cleanly(name):
    cfg = load_config(ROOT / "configs" / name)
    assert config_warnings(cfg) == []


def test_image_generation_is_the_image_task(tmp_path):
    """The lora-scripts articles write task_type "image-generation" for image LoRAs."""
    cfg = load_config(write(tmp_path, SEED_YAML.replace("task_type: text-to-image", 'task_type: "image-generation"')))
    assert cfg.task_type == "text-to-image"
    assert "metadata_path" in fields_for_task("image-generation")
    with pytest.raises(UserError, match="must be one of"):
        config_from_dict({"task_type": "image-generator"})


def test_init_lora_and_its_kohya_alias():
    assert config_from_dict({"init_lora": "models/Lora/a.safetensors"}).init_lora == "models/Lora/a.safetensors"
    assert config_from_dict({"network_weights": "a.safetensors"}).init_lora == "a.safetensors"
    with pytest.raises(UserError, match="both set init_lora"):
        config_from_dict({"network_weights": "a.safetensors", "init_lora": "b.safetensors"})
    assert "init_lora" in fields_for_task("text-generation") and "init_lora" in fields_for_task("text-to-image")


def test_help_texts_per_task():
    """Text runs save .gguf files: the text form's help says so, the image form's says .safetensors."""
    text = {s.name: s.doc for s in schema("text-generation")}
    image = {s.name: s.doc for s in schema("text-to-image")}
    assert ".gguf" in text["save_steps"] and ".safetensors" not in text["save_steps"]
    assert ".safetensors" in image["save_steps"] and ".gguf" not in image["save_steps"]
    assert "<lora:" not in text["output_name"] and ".gguf" in text["output_name"]
    assert "Not used by text runs" in text["save_every_n_epochs"] and "Not used by text runs" in text["bad_data"]
    assert "GGUF adapter" in text["init_lora"] and "kohya" not in text["init_lora"]
    both = {s.name: s.doc for s in schema()}
    assert ".gguf" in both["save_steps"] and ".safetensors" in both["save_steps"]


def test_text_runs_warn_about_image_only_save_keys():
    cfg = config_from_dict({"task_type": "text-generation", "save_every_n_epochs": 2})
    assert any("ignored for task_type text-generation: save_every_n_epochs" in w for w in config_warnings(cfg))


def test_gradient_checkpointing_is_true_false_or_auto(tmp_path):
    """Default auto; YAML true/false/auto, --set and REST bodies (JSON bools) keep their meaning; round trips exact."""
    assert TrainConfig().gradient_checkpointing == "auto"
    for written, value in (("true", True), ("false", False), ("auto", "auto"), ("AUTO", "auto"), ("yes", True),
                           ("off", False)):
        cfg = load_config(write(tmp_path, SEED_YAML + f"gradient_checkpointing: {written}\n"))
        assert cfg.gradient_checkpointing == value and type(cfg.gradient_checkpointing) is type(value)
        assert load_config(write(tmp_path, dump_config_yaml(cfg), "again.yaml")) == cfg
    assert apply_overrides(TrainConfig(), ["gradient_checkpointing=auto"]).gradient_checkpointing == "auto"
    assert config_from_dict({"gradient_checkpointing": True}).gradient_checkpointing is True
    with pytest.raises(UserError, match="'gradient_checkpointing' must be true, false or auto, got 'sometimes'"):
        config_from_dict({"gradient_checkpointing": "sometimes"})
    spec = next(s for s in schema() if s.name == "gradient_checkpointing")
    assert spec.type_name == "bool or auto" and spec.default == "auto"


def test_gradient_checkpointing_is_an_auto_on_off_dropdown_in_the_form():
    from extension.ui.form import from_widget, schema_fields, to_widget

    for task in ("text-to-image", "text-generation"):
        field = next(f for f in schema_fields(task) if f.name == "gradient_checkpointing")
        assert field.kind == "bool_auto" and field.choices == ("auto", "on", "off")
        assert [to_widget(field, v) for v in ("auto", True, False)] == ["auto", "on", "off"]
        assert [from_widget(field, w) for w in ("auto", "on", "off", True, False, None)] == [
            "auto", True, False, True, False, "auto"]
