"""install.py: independent of cwd, fast no-op when nothing is missing, installs only what is missing,
never moves a pinned package, installs nothing on SD.Next."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "install.py"


@pytest.fixture
def installer():
    spec = importlib.util.spec_from_file_location("lora_bridge_install", INSTALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nothing_missing_means_no_pip(installer, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(installer, "missing_requirements", lambda: [])
    monkeypatch.setattr(installer, "_pip", lambda *a: pytest.fail("pip must not run"))
    assert installer.main() == 0


def test_runs_from_any_directory(tmp_path):
    proc = subprocess.run([sys.executable, str(INSTALL)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr  # all present here: silent


def test_missing_packages_install_under_constraints_of_the_pins(installer, monkeypatch, tmp_path):
    (tmp_path / "requirements_versions.txt").write_text("numpy==1.26.2  # comment\nPyYAML==6.0\ntorch\n-e foo\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(installer, "missing_requirements", lambda: ["diffusers==0.31.0", "peft==0.13.2"])
    seen = {}

    def fake_pip(args, desc):
        seen["args"] = args
        seen["constraints"] = Path(args[args.index("-c") + 1]).read_text().split()

    monkeypatch.setattr(installer, "_pip", fake_pip)
    assert installer.main() == 0
    assert seen["args"][:3] == ["install", "diffusers==0.31.0", "peft==0.13.2"]
    pins = dict(line.split("==") for line in seen["constraints"])
    from importlib.metadata import version

    assert pins["numpy"] == version("numpy") and pins["PyYAML"] == version("PyYAML")
    assert pins["torch"] == version("torch") and pins["transformers"] == version("transformers")
    assert "foo" not in pins


def test_sdnext_gets_nothing(installer, monkeypatch, tmp_path):
    (tmp_path / "installer.py").write_text("")
    (tmp_path / "modules").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(installer, "missing_requirements", lambda: ["diffusers==0.31.0"])
    monkeypatch.setattr(installer, "_pip", lambda *a: pytest.fail("pip must not run on SD.Next"))
    assert installer.main() == 0


def test_pip_failure_is_reported_not_raised(installer, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(installer, "missing_requirements", lambda: ["peft==0.13.2"])

    def failing(args, desc):
        raise subprocess.CalledProcessError(1, "pip")

    monkeypatch.setattr(installer, "_pip", failing)
    assert installer.main() == 1
    assert "without moving the WebUI's pinned packages" in capsys.readouterr().out


# ---- the real thing: a venv holding A1111 1.10's pins -------------------------------------
A1111_PINS = ["transformers==4.30.2", "accelerate==0.21.0", "safetensors==0.4.2", "numpy==1.26.2",
              "huggingface_hub==0.36.2", "Pillow==9.5.0", "tokenizers==0.13.3", "torch==2.13.0"]


def _freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return {row["name"].lower().replace("_", "-"): row["version"] for row in json.loads(out)}


@pytest.mark.slow
def test_a1111_pins_survive_two_runs(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *A1111_PINS], check=True, timeout=1800)
    webui = tmp_path / "webui"
    webui.mkdir()
    (webui / "requirements_versions.txt").write_text("\n".join(A1111_PINS[:-1] + ["torch"]) + "\n")
    env = {**os.environ, "PYTHONPATH": str(webui)}
    before = _freeze(python)
    first = subprocess.run([str(python), str(INSTALL)], cwd=webui, env=env, capture_output=True, text=True,
                           timeout=1800)
    assert first.returncode == 0, first.stdout + first.stderr
    after = _freeze(python)
    for pin in A1111_PINS:
        name, version = pin.split("==")
        assert after[name.lower().replace("_", "-")].split("+")[0] == version, pin
    assert after["diffusers"] == "0.31.0" and after["peft"] == "0.13.2" and "gguf" in after
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}  # nothing that was there moved
    second = subprocess.run([str(python), str(INSTALL)], cwd=webui, env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0 and second.stdout == "", second.stdout
    assert _freeze(python) == after
    check = subprocess.run([str(python), "-c", "import diffusers, peft, transformers; print(transformers.__version__)"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and check.stdout.strip() == "4.30.2", check.stderr[-2000:]
