"""The GGUF copy of a legacy GGML base is made once and reused, with gguf-py old and new."""

from __future__ import annotations

import pytest

from extension.config import TrainConfig
from extension.text.base_gguf import prepare_base_gguf


def _config(base, **extra):
    return TrainConfig(base_model=str(base), ggml_n_kv_heads=2, **extra)


@pytest.mark.parametrize("old_gguf_py", [False, True], ids=["gguf-py", "gguf-py without contents()"])
def test_copy_is_reused_by_the_next_run(tiny, tmp_path, monkeypatch, old_gguf_py):
    import shutil

    from gguf import gguf_reader

    base = tmp_path / "models" / "tiny.ggmlv3.q4_0.bin"
    base.parent.mkdir()
    shutil.copy(tiny["ggml-Q4_0"], base)
    if old_gguf_py:  # Forge puts its bundled, older gguf-py first on sys.path: ReaderField has no contents()
        monkeypatch.delattr(gguf_reader.ReaderField, "contents", raising=False)
    first_log: list[str] = []
    first = prepare_base_gguf(_config(base), tmp_path / "run1", first_log.append)
    assert first == base.with_suffix(".gguf") and first.exists()
    assert (first.stat().st_mode & 0o444) == 0o444
    written = first.stat().st_mtime_ns

    second_log: list[str] = []
    second = prepare_base_gguf(_config(base), tmp_path / "run2", second_log.append)
    assert second == first and first.stat().st_mtime_ns == written
    assert not (tmp_path / "run2").exists() or not list((tmp_path / "run2").glob("*.gguf"))
    assert len(second_log) == 1 and "made by an earlier run" in second_log[0]


def test_copy_goes_to_the_run_folder_when_not_allowed_beside_the_base(tiny, tmp_path):
    import shutil

    base = tmp_path / "models" / "tiny.ggmlv3.q4_0.bin"
    base.parent.mkdir()
    shutil.copy(tiny["ggml-Q4_0"], base)
    (tmp_path / "run").mkdir()  # the engine makes its output_dir before
    copy = prepare_base_gguf(_config(base, ggml_copy_beside_base=False), tmp_path / "run", [].append)
    assert copy == (tmp_path / "run").resolve() / "tiny.ggmlv3.q4_0.gguf" and copy.exists()
    assert sorted(p.name for p in base.parent.iterdir()) == [base.name]
