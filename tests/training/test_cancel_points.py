"""Issue 22: cancel stops a run wherever it is (model loading, caching, data, the llama.cpp check), not only
after an optimizer step. No tight timing: each test asserts the run ended before the slow phase could."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from image_setup import image_config

from extension.cancel import RunCancelled, cancel_point
from extension.jobs import JobManager
from extension.training.events import TrainingControl


def test_cancel_point_is_a_no_op_outside_a_run():
    cancel_point()  # nothing active: the CLI's lint and the tests call the same loops
    control = TrainingControl()
    with control.active():
        cancel_point()
        control.request_cancel()
        with pytest.raises(RunCancelled):
            cancel_point()
    cancel_point()


def test_cancel_while_the_base_loads_ends_before_any_step(bases, shapes, tmp_path, monkeypatch):
    """A slow UNet build (a big checkpoint) with cancel pressed meanwhile: the VAE is never built, no step runs."""
    import extension.models.sd_loader as loader

    entered, built = threading.Event(), []
    real_unet = loader._build_unet

    def slow_unet(*args, **kwargs):
        entered.set()
        time.sleep(1.0)  # one long read, with no cancel check of its own
        built.append("unet")
        return real_unet(*args, **kwargs)

    monkeypatch.setattr(loader, "_build_unet", slow_unet)
    events = []
    jobs = JobManager()
    hooks = _Recorder(events)
    jobs.start(image_config(bases["sd1"], shapes, tmp_path / "out", sample_every_n_steps=0), hooks=hooks)
    assert entered.wait(300)
    jobs.cancel()
    st = jobs.wait(300)
    assert st["state"] == "cancelled", st
    assert built == ["unet"] and st["step"] == 0
    assert "start" not in events and "step" not in events  # never reached the loop
    assert not (tmp_path / "out" / "t.safetensors").exists()


class _Recorder:
    def __init__(self, events):
        self.events = events

    def before_run(self):
        pass

    def after_run(self):
        pass

    def on_event(self, event):
        self.events.append(event.kind)

    def after_save(self, path):
        return ""


def test_cancel_while_caches_fill_stops_after_the_current_batch():
    from extension.image.memory import fill_caches

    class Data:
        def batches_for_process(self, epoch, rank, world):
            return [[0], [1], [2], [3]]

        def item(self, index, epoch):
            return type("Item", (), {"caption": f"c{index}"})()

    control, seen = TrainingControl(), []

    def latents_of(items):
        seen.append(len(items))
        control.request_cancel()  # pressed while the first batch was being encoded

    with control.active(), pytest.raises(RunCancelled):
        fill_caches(Data(), lambda captions: None, latents_of, epochs=3, rank=0, world=1)
    assert seen == [1]


def test_cancel_while_text_is_tokenized(tmp_path, monkeypatch):
    """A slow tokenizer over 400 lines (20 s at least): cancelled after the first lines, the run ends at once."""
    from extension.text import data as text_data
    from extension.tiny.llama import build_tiny_llama, tiny_vocab, write_tiny_gguf

    vocab = tiny_vocab()
    base = write_tiny_gguf(build_tiny_llama(vocab=vocab), tmp_path / "tiny.gguf", qtype="F32", vocab=vocab)
    lines = tmp_path / "t.txt"
    lines.write_text("the cat sat on the mat\n" * 400)
    started = threading.Event()
    real_plain = text_data._Builder.plain

    def slow_plain(self, text):
        started.set()
        time.sleep(0.05)
        return real_plain(self, text)

    monkeypatch.setattr(text_data._Builder, "plain", slow_plain)
    jobs = JobManager()
    jobs.start({"task_type": "text-generation", "base_model": str(base), "train_data_dir": str(lines),
                "output_dir": str(tmp_path / "out"), "output_name": "tl", "max_train_steps": 2,
                "llama_cpp_check": "off"})
    assert started.wait(120)
    began = time.monotonic()
    jobs.cancel()
    st = jobs.wait(120)
    assert st["state"] == "cancelled" and st["step"] == 0
    assert time.monotonic() - began < 400 * 0.05  # before tokenizing could have ended
    assert not (tmp_path / "out").exists()  # the run made it; a cancelled run leaves no empty folder


def test_cancel_stops_the_llama_cpp_subprocess():
    from extension.text.llama_check import _run_cancellable

    control = TrainingControl()
    threading.Timer(0.5, control.request_cancel).start()
    began = time.monotonic()
    with control.active(), pytest.raises(RunCancelled):
        _run_cancellable([sys.executable, "-c", "import time; time.sleep(60)"], timeout=120)
    assert time.monotonic() - began < 30  # the child (60 s) was killed, not waited for


def test_llama_cpp_runner_keeps_subprocess_semantics():
    from extension.text.llama_check import _run_cancellable

    done = _run_cancellable([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"
                             "; sys.exit(3)"], timeout=60)
    assert (done.returncode, done.stdout.strip(), done.stderr.strip()) == (3, "out", "err")
    with pytest.raises(subprocess.TimeoutExpired):
        _run_cancellable([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
