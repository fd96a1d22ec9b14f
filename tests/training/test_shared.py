"""The pieces both engines share (schedules, optimizers, training state, the NaN guard) and image outputs and prompts.

Configs are built as ``TrainConfig(...)`` without validation, so a test can hold a value the schema refuses."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from extension.config import TrainConfig
from extension.errors import UserError
from extension.image.samples import parse_prompt
from extension.training import checkpoint as ckpt
from extension.training.optimizers import build_optimizer
from extension.training.progress import NonFiniteLoss, Throughput, check_finite
from extension.training.schedulers import build_scheduler, lr_factor


def _lrs(name, total=10, warmup=2, **kw):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, TrainConfig(lr_scheduler=name, lr_warmup_steps=warmup, **kw), total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_schedules_with_warmup():
    assert _lrs("constant") == pytest.approx([1 / 3, 2 / 3] + [1.0] * 8)
    linear = _lrs("linear")
    assert linear[:2] == pytest.approx([1 / 3, 2 / 3]) and linear[2] == 1.0
    assert all(a > b for a, b in zip(linear[2:], linear[3:], strict=False))
    cosine = _lrs("cosine", warmup=0)
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    restarts = _lrs("cosine_with_restarts", warmup=0, lr_scheduler_num_cycles=2)
    assert restarts[5] == pytest.approx(1.0)  # second cycle starts again at the top
    poly = _lrs("polynomial", warmup=0, lr_scheduler_power=2.0)
    assert poly[5] == pytest.approx((1 - 0.5) ** 2)
    assert lr_factor("linear", 10, 0)(10) == 0.0
    with pytest.raises(UserError, match="unknown lr_scheduler"):
        _lrs("exponential")


def test_optimizers_by_name():
    params = [torch.nn.Parameter(torch.zeros(3))]
    groups = [{"params": params, "lr": 0.5}]
    opt = build_optimizer(groups, TrainConfig(optimizer="AdamW", learning_rate=1e-3, weight_decay=0.0))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 0.5
    opt = build_optimizer(groups, TrainConfig(optimizer="adafactor", learning_rate=1e-3))
    assert type(opt).__name__ == "Adafactor"
    for name, module in (("adamw8bit", "bitsandbytes"), ("prodigy", "prodigyopt")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(UserError, match=f"pip install {module}"):
                build_optimizer(groups, TrainConfig(optimizer=name))
    with pytest.raises(UserError, match="unknown optimizer"):
        build_optimizer(groups, TrainConfig(optimizer="sgdx"))
    with pytest.raises(UserError, match="nothing to train"):
        build_optimizer([{"params": []}], TrainConfig(optimizer="adamw"))


def test_training_state_round_trip_and_keep_last(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, TrainConfig(lr_scheduler="linear", lr_warmup_steps=1), 10)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    for step in (1, 2, 3):
        ckpt.save_training_state(tmp_path, step=step, epoch=1, batch_in_epoch=step, lora=dict(model.state_dict()),
                                 optimizer=opt, scheduler=sched, keep_last=2)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    (tmp_path / ".step-00000009.abc.tmp").mkdir()  # what a killed save leaves behind
    assert [p.name for p in ckpt.list_states(tmp_path)] == ["step-00000002", "step-00000003"]

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    state = ckpt.load_training_state(tmp_path)
    assert state.step == 3 and state.epoch == 1 and state.batch_in_epoch == 3
    for k, v in model.state_dict().items():
        assert torch.equal(state.lora[k], v)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(state.optimizer)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    ckpt.restore_rng(state.rng)
    # The RNG state saved with step 3 was taken after seeding 5 and no draws.
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    with pytest.raises(UserError, match="no saved training state"):
        ckpt.load_training_state(tmp_path / "nothing")


def test_output_files_keep_last_n(tmp_path):
    from extension._converters import converters
    from extension.image.outputs import OutputFiles

    rng = np.random.default_rng(0)
    module = converters.LoraModule(down=rng.standard_normal((2, 8)).astype(np.float32),
                                   up=rng.standard_normal((8, 2)).astype(np.float32), alpha=2.0)
    adapter = converters.LoraAdapter(
        modules={"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": module}, arch="sd1",
        metadata={"ss_network_module": "networks.lora"})
    files = OutputFiles(tmp_path, "x", keep_last=2)
    for step in (100, 200, 300):
        files.save(adapter, step)
    files.save(adapter, None)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "x-000200.safetensors", "x-000300.safetensors", "x.safetensors"]
    assert files.written[-1].endswith("x.safetensors")
    loaded = converters.load_adapter(tmp_path / "x.safetensors")
    (name, got), = loaded.modules.items()
    np.testing.assert_allclose(got.delta(), module.delta(), rtol=2e-3, atol=2e-3)  # stored as f16


def test_prompt_weights_and_guards():
    assert parse_prompt("a red circle <lora:shapes:0.7>") == ("a red circle", 0.7)
    assert parse_prompt("<lora:shapes:0.5:0.2>, blue square") == ("blue square", 0.5)
    assert parse_prompt("plain prompt") == ("plain prompt", 1.0)
    assert parse_prompt("x <lora:shapes>") == ("x", 1.0)
    assert check_finite(1.5, 1) == 1.5
    with pytest.raises(NonFiniteLoss, match="at step 7"):
        check_finite(float("inf"), 7)
    clock = iter([0.0, 1.0, 2.0])
    t = Throughput(10, clock=lambda: next(clock))
    assert t.update(1) == (None, None)
    rate, eta = t.update(2)
    assert rate == 1.0 and eta == 8.0


def test_train_items_match_the_data_layer(shapes):
    """The engine's lazily-decoded items carry exactly what the data layer's samples carry."""
    from extension.config import config_from_dict
    from extension.image.data import ImageData

    config = config_from_dict(dict(train_data_dir=str(shapes), resolution=64, min_bucket_reso=64, max_bucket_reso=64,
                                   flip_aug=True, shuffle_caption=True, seed=4), source="test")
    data = ImageData(config)
    for epoch in (0, 1):
        for index in range(len(data.dataset)):
            item, sample = data.item(index, epoch), data.dataset.sample(index, epoch)
            assert (item.index, item.caption, item.flipped) == (sample.image_index, sample.caption, sample.flipped)
            assert (item.original_size, item.crop_top_left, item.target_size) == (
                tuple(sample.original_size), tuple(sample.crop_top_left), tuple(sample.target_size))
            assert torch.equal(item.pixels, torch.from_numpy(sample.pixels))


def test_clip_tokenizer_from_an_open_clip_style_bpe_file(tmp_path):
    import gzip

    from transformers import CLIPTokenizer

    from extension.models.tokenizers import tokenizer_dir_from_bpe

    bpe = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nc a\nca t</w>\n')
    folder = tokenizer_dir_from_bpe(bpe, tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tok("cat")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "cat</w>", "<|endoftext|>"]
    assert len(tok) == 256 * 2 + 3 + 2  # bytes, bytes</w>, merges, start/end


def test_an_image_resume_replaces_only_its_own_files_without_overwrite(tmp_path):
    """Image runs share ``<output_dir>/state``: a state is this run's when it names its output_name; the copy the
    run published into the Lora folder is its own while it holds the same bytes."""
    from extension.config import config_from_dict
    from extension.training.run_folder import check_overwrite, may_replace_outputs

    out, loras = tmp_path / "out", tmp_path / "loras"
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    ckpt.save_training_state(out / "state", step=3, epoch=0, batch_in_epoch=3, lora=dict(model.state_dict()),
                             optimizer=opt, scheduler=None, extra={"output_name": "mine"})
    loras.mkdir()
    for folder in (out, loras):
        (folder / "mine.safetensors").write_bytes(b"the run's LoRA")
        (folder / "theirs.safetensors").write_bytes(b"another LoRA")

    def config(name: str, **extra):
        return config_from_dict({"output_dir": str(out), "output_name": name, **extra})

    check_overwrite(config("mine", resume="auto"), loras)
    assert may_replace_outputs(config("mine", resume="auto"), loras)
    for refused in (config("mine"), config("theirs", resume="auto"), config("theirs", resume=str(out / "state"))):
        with pytest.raises(UserError, match="already exists; choose another output_name"):
            check_overwrite(refused, loras)
        assert not may_replace_outputs(refused, loras)
    (loras / "mine.safetensors").write_bytes(b"a different LoRA of the same name")
    with pytest.raises(UserError, match=f"{loras / 'mine.safetensors'}: already exists"):
        check_overwrite(config("mine", resume="auto"), loras)
    assert not may_replace_outputs(config("new", resume="auto"), loras)  # nothing to replace: a new file stays refused


def test_a_state_save_removes_only_temps_whose_writer_is_gone(tmp_path):
    """Another live process's half-written state (atomic temp ``.step-N.<pid>-XXXXXXXX.tmp``) is never removed;
    a dead writer's is."""
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        theirs = tmp_path / f".step-00000005.{live.pid}-abcd1234.tmp"
        gone = tmp_path / f".step-00000004.{done.pid}-abcd1234.tmp"
        for folder in (theirs, gone):
            folder.mkdir()
            (folder / "lora.pt").write_bytes(b"half written")
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        ckpt.save_training_state(tmp_path, step=1, epoch=0, batch_in_epoch=1, lora=dict(model.state_dict()),
                                 optimizer=opt, scheduler=None)
        assert (theirs / "lora.pt").read_bytes() == b"half written"
        assert not gone.exists()
    finally:
        live.kill()
        live.wait()
