"""The text run's memory plan: the activation figure against what autograd keeps, ``auto`` checkpointing, and the
fit check that stops a run before the model loads (budgets faked through LORA_BRIDGE_MEMORY_BUDGET)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q
from textutil import text_config

from extension.cli import main
from extension.errors import UserError
from extension.text import memory_plan
from extension.text.engine import train_text
from extension.text.families import FAMILIES, TextConfig, tensor_names
from extension.text.gguf_model import build_model, read_text_config
from extension.text.lora import inject_lora
from extension.text.memory_plan import GIB, estimate_peak, layer_floats, plan_checkpointing

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# One row per family block set: GQA + SwiGLU, Q/K norms, GeGLU + post-norms + sliding window (shorter than the
# sample) + Q/K norms, soft-capped attention.
SHAPES = {
    "llama": {},
    "qwen3": {},
    "gemma3": {"activation": "gelu", "embed_scale": 16.0, "sliding_window": 8, "swa_layers": (True, True)},
    "gemma2": {"activation": "gelu", "embed_scale": 16.0, "attn_softcap": 50.0},
    "starcoder2": {"activation": "gelu", "norm": "layer"},  # LayerNorms with biases, non-gated FFN with biases
}


def _random_model(arch: str, layers: int, **overrides) -> tuple[TextConfig, torch.nn.Module]:
    """A float32 ``TextModel`` of ``arch``'s blocks (the tensors its gguf-py table lists) with random weights."""
    cfg = TextConfig(arch=arch, vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=layers,
                     num_heads=8, num_kv_heads=2, head_dim=32, **overrides)
    kinds = set(tensor_names(arch).values())
    rng = np.random.default_rng(0)
    h, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    tensors = {}

    def add(name: str, *shape: int) -> None:
        value = rng.standard_normal(shape) * 0.05 if len(shape) == 2 else 1.0 + 0.1 * rng.standard_normal(shape)
        tensors[name] = (value.astype(np.float32), Q.F32, shape)

    add("model.embed_tokens.weight", cfg.vocab_size, h)
    add("model.norm.weight", h)
    add("lm_head.weight", cfg.vocab_size, h)
    for i in range(layers):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", h)
        add(p + "post_attention_layernorm.weight", h)
        add(p + "self_attn.q_proj.weight", q, h)
        add(p + "self_attn.k_proj.weight", kv, h)
        add(p + "self_attn.v_proj.weight", kv, h)
        add(p + "self_attn.o_proj.weight", h, q)
        if T.ATTN_Q_NORM in kinds:
            add(p + "self_attn.q_norm.weight", cfg.head_dim)
            add(p + "self_attn.k_norm.weight", cfg.head_dim)
        if T.ATTN_POST_NORM in kinds:
            add(p + "post_attn_norm.weight", h)
            add(p + "post_ffn_norm.weight", h)
        if cfg.norm == "layer":
            for name in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.o_proj"):
                add(p + name + ".bias", q if name.endswith("q_proj") else h)
        if "mlp.c_fc" in dict(FAMILIES[arch].modules).values():
            add(p + "mlp.c_fc.weight", f, h)
            add(p + "mlp.c_fc.bias", f)
            add(p + "mlp.c_proj.weight", h, f)
            continue
        add(p + "mlp.gate_proj.weight", f, h)
        add(p + "mlp.up_proj.weight", f, h)
        add(p + "mlp.down_proj.weight", h, f)
    return cfg, build_model(cfg, tensors, permuted_qk=False)


def _saved_activation_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one loss, weights and LoRA excluded."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if t.dtype.is_floating_point and storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.causal_lm_loss_sum(ids, ids)
    return sum(kept.values())


@pytest.mark.parametrize("arch", [a for a in SHAPES if a in FAMILIES])
def test_layer_floats_is_what_autograd_keeps(arch):
    """Per token and layer (a 2-layer minus a 1-layer model), the estimate is within 5% of the bytes autograd keeps."""
    batch, tokens = 2, 48
    ids = torch.randint(0, 512, (batch, tokens), generator=torch.Generator().manual_seed(0))
    saved = []
    for layers in (1, 2):
        overrides = dict(SHAPES[arch])
        if "swa_layers" in overrides:
            overrides["swa_layers"] = overrides["swa_layers"][:layers]
        cfg, model = _random_model(arch, layers, **overrides)
        inject_lora(model, [*ALL_TARGETS, "c_fc", "c_proj"], 8, 16)
        saved.append(_saved_activation_bytes(model, ids))
    measured = (saved[1] - saved[0]) / 4 / (batch * tokens)
    assert 0.95 <= measured / layer_floats(cfg, tokens) <= 1.05, (measured, layer_floats(cfg, tokens))


LLAMA2_7B = TextConfig(arch="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                       num_heads=32, num_kv_heads=32)
Q4_0_7B = 3_790_000_000  # bytes of the 7B-shaped Q4_0 file bench_text_7b builds


def _article_config(**extra):
    from extension.config import config_from_dict

    # configs/lora_scripts_text.yaml's training keys; the benchmark's samples are 64 tokens
    return config_from_dict({"task_type": "text-generation", "lora_rank": 16, "batch_size": 4, **extra})


def test_articles_7b_config_turns_checkpointing_on_within_file_plus_2_gib(monkeypatch):
    monkeypatch.setenv(memory_plan.BUDGET_ENV, "20G")  # plenty: the CPU's overhead rule decides
    config = _article_config()
    assert config.gradient_checkpointing == "auto"
    plan = plan_checkpointing(config, LLAMA2_7B, Q4_0_7B, 64, "cpu")
    assert plan.checkpointing and plan.line.startswith("gradient_checkpointing auto: on (estimated peak without it")
    assert plan.estimate.total <= Q4_0_7B + 2 * GIB
    plain = estimate_peak(LLAMA2_7B, Q4_0_7B, config, 64, checkpointing=False)
    assert plain.total > Q4_0_7B + 2 * GIB  # measured without checkpointing: 8.03 GiB
    # On a GPU only the free VRAM decides
    assert not plan_checkpointing(config, LLAMA2_7B, Q4_0_7B, 64, "cuda").checkpointing


def test_short_samples_leave_checkpointing_off(monkeypatch):
    monkeypatch.setenv(memory_plan.BUDGET_ENV, "20G")
    plan = plan_checkpointing(_article_config(batch_size=1), LLAMA2_7B, Q4_0_7B, 16, "cpu")
    assert not plan.checkpointing and plan.line.startswith("gradient_checkpointing auto: off")


@pytest.fixture
def run(tiny, tmp_path, monkeypatch):
    """run(budget, **config) -> (result, log lines, model loaded?) of a short run on the tiny Q4_0 base."""
    from extension.text import engine

    data = tmp_path / "data.txt"
    data.write_text("the cat sat on the mat and the dog ran to the mat\nthe dog ran to the cat and it sat\n" * 2)
    loaded = []
    real_load = engine.load_text_model
    monkeypatch.setattr(engine, "load_text_model", lambda *a, **k: loaded.append(1) or real_load(*a, **k))

    def go(budget: str, **extra):
        monkeypatch.setenv(memory_plan.BUDGET_ENV, budget)
        events = []
        cfg = text_config(tiny["Q4_0"], data, tmp_path / "out", max_train_steps=2, **extra)
        try:
            result = train_text(cfg, callback=events.append)
        finally:
            lines = [e.message for e in events if e.kind == "log"]
        return result, lines, bool(loaded)

    return go


def _estimates(tiny, **extra):
    from extension.config import config_from_dict

    cfg = read_text_config(tiny["Q4_0"])
    size = tiny["Q4_0"].stat().st_size
    config = config_from_dict({"task_type": "text-generation", "batch_size": 2, "lora_rank": 8, **extra})
    longest = 15  # tokens of the longest sample of the fixture's data (BOS included)
    return [estimate_peak(cfg, size, config, longest, on).total for on in (False, True)]


def test_auto_turns_checkpointing_on_when_the_plain_run_would_pass_the_budget(run, tiny):
    plain, low = _estimates(tiny)
    assert low < plain
    result, lines, _ = run(str((plain + low) // 2))
    assert result.status == "done"
    assert [line for line in lines if line.startswith("gradient_checkpointing auto: on")], lines
    result, lines, _ = run("64G")
    assert [line for line in lines if line.startswith("gradient_checkpointing auto: off")], lines


def test_a_run_that_cannot_fit_stops_before_the_model_loads(run, tiny):
    plain, low = _estimates(tiny)
    with pytest.raises(UserError) as info:
        run(str(low // 2))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tiny['Q4_0']}: this run needs about ")
    for hint in ("max_length", "batch_size", "smaller quant", memory_plan.BUDGET_ENV):
        assert hint in message, message
    assert "gradient_checkpointing" not in message  # auto already counted it on


def test_checkpointing_off_that_cannot_fit_names_the_setting(run, tiny):
    plain, low = _estimates(tiny)
    with pytest.raises(UserError, match="set gradient_checkpointing to auto or true, lower max_length"):
        run(str((plain + low) // 2), gradient_checkpointing=False)


def test_budget_override_must_be_a_size(monkeypatch):
    monkeypatch.setenv(memory_plan.BUDGET_ENV, "lots")
    with pytest.raises(UserError, match="LORA_BRIDGE_MEMORY_BUDGET='lots' is not a size"):
        memory_plan.memory_budget("cpu")
    assert memory_plan.parse_bytes("6G") == 6 * GIB and memory_plan.parse_bytes("1.5GiB") == 3 * GIB // 2


def test_check_fit_reads_the_header_only_and_refuses_only_what_the_engine_would(run, tiny, monkeypatch):
    """The start check (tab, REST, CLI) from the GGUF header without its vocabulary: a run that cannot fit even
    with the shortest samples is one line; a run that fits only with shorter samples is left to the engine."""
    import dataclasses

    from extension.config import config_from_dict
    from extension.text import gguf_model

    full = read_text_config(tiny["Q4_0"])
    _, low = _estimates(tiny)  # the engine's figure for the fixture's samples
    monkeypatch.setattr(gguf_model, "read_gguf_metadata", lambda *a, **k: pytest.fail("the vocabulary was read"))
    header = read_text_config(tiny["Q4_0"], vocabulary=False)
    assert dataclasses.replace(header, tokenizer={}) == dataclasses.replace(full, tokenizer={})
    config = config_from_dict({"task_type": "text-generation", "base_model": str(tiny["Q4_0"]), "batch_size": 2,
                               "lora_rank": 8})
    least = estimate_peak(header, tiny["Q4_0"].stat().st_size, config, memory_plan.MIN_TOKENS, True).total
    assert least < low
    monkeypatch.setenv(memory_plan.BUDGET_ENV, str(least - 1))
    with pytest.raises(UserError) as info:
        memory_plan.check_fit(config, "cpu")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tiny['Q4_0']}: this run needs about ")
    assert "even with the shortest samples" in message and "smaller quant" in message
    assert "max_length" not in message  # shorter samples would not help
    monkeypatch.setenv(memory_plan.BUDGET_ENV, str((least + low) // 2))
    assert memory_plan.check_fit(config, "cpu").estimate.total <= (least + low) // 2
    monkeypatch.undo()  # the engine reads the vocabulary to tokenize: it refuses with the samples' length
    with pytest.raises(UserError, match=r"this run needs about .*lower max_length \(longest sample 15 tokens\)"):
        run(str((least + low) // 2))


def test_cli_refuses_a_run_that_cannot_fit_before_the_vocabulary_is_read(tiny, tmp_path, monkeypatch, capsys):
    from extension.text import engine

    data = tmp_path / "data.txt"
    data.write_text("the cat sat on the mat\n" * 4)
    monkeypatch.setenv(memory_plan.BUDGET_ENV, "1M")
    monkeypatch.setattr(engine, "read_base", lambda *a, **k: pytest.fail("the tokenizer was read"))
    monkeypatch.setattr(engine, "load_text_model", lambda *a, **k: pytest.fail("the model was loaded"))
    yaml = tmp_path / "run.yaml"
    yaml.write_text(f"task_type: text-generation\nbase_model: {tiny['Q4_0']}\ntrain_data_dir: {data}\n"
                    f"output_dir: {tmp_path / 'out'}\nllama_cpp_check: 'off'\n")
    code = main(["train", "--config", str(yaml)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "this run needs about" in err[0], err  # one line, no traceback
    assert not (tmp_path / "out").exists()
