"""#10.11: files and folders LoRA Bridge writes are readable per the umask; failed and cancelled runs
leave no empty folders; ss_num_epochs / ss_epoch state what ran, counted as the tab counts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from extension.jobs import JobManager
from extension.ui.handlers import Handlers
from extension.ui.host import Host


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_converter_outputs_follow_the_umask(umask, mask, tmp_path, tiny_lora):
    umask(mask)
    h = Handlers(Host(output_dir=tmp_path / "loras", extra_folders=[tmp_path], jobs=JobManager()))
    kohya, peft = tmp_path / "out.safetensors", tmp_path / "peft_out"
    assert h.convert(str(tiny_lora), str(kohya), "kohya", "", "", "", False).startswith("wrote")
    assert h.convert(str(tiny_lora), str(peft), "peft", "", "", "", False).startswith("wrote")
    assert _mode(kohya) == 0o666 & ~mask
    assert _mode(peft) == 0o777 & ~mask
    for inner in peft.rglob("*"):
        assert _mode(inner) == (0o777 if inner.is_dir() else 0o666) & ~mask, inner


def test_published_lora_follows_the_umask(umask, tmp_path, runner_factory, dataset, tiny_base):
    umask(0o022)
    host = Host(output_dir=tmp_path / "loras",
                extra_folders=[tmp_path], jobs=JobManager(runner=runner_factory(steps=2)))
    host.start_job({"base_model": str(tiny_base), "train_data_dir": str(dataset), "output_name": "shared",
                    "output_dir": str(host.work_dir("shared", "text-to-image"))})
    assert host.jobs.wait(30)["state"] == "done"
    assert _mode(tmp_path / "loras" / "shared.safetensors") == 0o644
    assert _mode(host.work_dir("shared", "text-to-image")) == 0o755


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_failed_and_cancelled_runs_leave_no_empty_folders(how, tmp_path, runner_factory, dataset, tiny_base):
    host = Host(output_dir=tmp_path / "loras", extra_folders=[tmp_path],
                jobs=JobManager(runner=runner_factory(steps=300, delay=0.02, fail=how == "failed")))
    run_dir = host.work_dir("gone", "text-to-image")
    host.start_job({"base_model": str(tiny_base), "train_data_dir": str(dataset), "output_name": "gone",
                    "output_dir": str(run_dir)})
    if how == "cancelled":
        host.jobs.cancel()
    assert host.jobs.wait(30)["state"] == how
    assert not run_dir.exists()


@pytest.mark.slow
def test_epoch_metadata_states_what_ran(tmp_path, dataset, tiny_base):
    """epochs: 10 but max_train_steps stops in the first epoch: ss_num_epochs 1, ss_epoch 1; the tab says epoch 1."""
    from extension._converters import converters
    from extension.tiny.sd import write_tokenizer_files
    from extension.ui.form import to_widget

    host = Host(output_dir=tmp_path / "loras", extra_folders=[tmp_path], jobs=JobManager())  # the real engine
    h = Handlers(host)
    values = {f.name: to_widget(f, f.default) for f in h.image_fields}
    values.update(resolution=64, epochs=10, max_train_steps="2", batch_size=1, lora_rank=2, lora_alpha=2,
                  sample_every_n_steps=0, mixed_precision="no", min_bucket_reso=64, max_bucket_reso=64,
                  tokenizer_path=str(write_tokenizer_files(tmp_path / "tokenizer")))
    message = h.start(str(dataset), str(tiny_base), "epochs", *[values[f.name] for f in h.image_fields])
    assert message.startswith("started training epochs"), message
    st = host.jobs.wait(600)
    assert st["state"] == "done", st
    header, _ = converters.safetensors_io.read_header(Path(host.published[0]))
    meta = header["__metadata__"]
    assert (meta["ss_num_epochs"], meta["ss_epoch"], meta["ss_steps"]) == ("1", "1", "2"), json.dumps(meta)[:300]
    assert " · epoch 1 · " in h.view()[1]
