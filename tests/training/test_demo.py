"""``lora-bridge demo`` end to end in a temporary folder (offline, CPU)."""

from __future__ import annotations

import pytest

from extension._converters import converters


@pytest.mark.slow
def test_demo_runs_offline(tmp_path, capsys, monkeypatch):
    from extension import demo

    monkeypatch.setattr(demo, "_text_demo", lambda workdir: None)  # the text part has its own tests
    monkeypatch.chdir(tmp_path)
    assert demo.run_demo() == 0
    out = capsys.readouterr().out
    work = tmp_path / "lora-bridge-demo"
    final = work / "output" / "demo_shapes.safetensors"
    assert f"<lora:{demo.NAME}:0.7>" in out and str(final) in out
    report = converters.inspect_adapter(final)
    assert report["arch"] == "sd1" and report["metadata"]["ss_output_name"] == demo.NAME
    samples = sorted(p.name for p in (work / "output" / "samples").glob("*.png"))
    assert samples == ["before-0.png", "before-1.png", "step000040-0.png", "step000040-1.png"]
    assert (work / "demo.yaml").is_file()
