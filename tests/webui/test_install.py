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
    monkeypatch.setattr(installer, "missing_requirements", lambda *a: [])
    monkeypatch.setattr(installer, "_pip", lambda *a: pytest.fail("pip must not run"))
    assert installer.main() == 0


def test_runs_from_any_directory(tmp_path):
    proc = subprocess.run([sys.executable, str(INSTALL)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr  # all present here: silent


def test_missing_packages_install_under_constraints_of_the_pins(installer, monkeypatch, tmp_path):
    (tmp_path / "requirements_versions.txt").write_text("numpy==1.26.2  # comment\nPyYAML==6.0\ntorch\n-e foo\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(installer, "missing_requirements", lambda *a: ["diffusers==0.31.0", "peft==0.13.2"])
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
    monkeypatch.setattr(installer, "missing_requirements", lambda *a: ["diffusers==0.31.0"])
    monkeypatch.setattr(installer, "_pip", lambda *a: pytest.fail("pip must not run on SD.Next"))
    assert installer.main() == 0


def test_pip_failure_is_reported_not_raised(installer, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(installer, "missing_requirements", lambda *a: ["peft==0.13.2"])

    def failing(args, desc):
        raise subprocess.CalledProcessError(1, "pip")

    monkeypatch.setattr(installer, "_pip", failing)
    assert installer.main() == 1
    assert "without moving the WebUI's pinned packages" in capsys.readouterr().out


# ---- Forge Neo: pins in requirements.txt, diffusers 0.37 that refuses a peft older than 0.17 -----
# The newest requirements.txt of Neo (sd-webui-forge-classic, neo branch): no peft, no gradio (its
# launcher installs gradio first), an environment marker on one line.
NEO_REQUIREMENTS = """GitPython==3.1.57
Pillow==12.3.0
accelerate==1.14.0
audioop-lts==0.2.2;python_version>="3.13"
diffusers==0.37.1
fastapi==0.127.1
httpx==0.28.1
huggingface-hub==0.36.2
numpy==2.3.5
protobuf==4.25.9
pydantic-core==2.27.2
pydantic==2.10.6
safetensors==0.8.0
transformers==4.57.6
torch
"""


def _fake_dist(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata finds it: ``NAME-VERSION.dist-info`` plus files."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)


@pytest.fixture
def host_stack(installer, monkeypatch, tmp_path):
    """``host_stack(diffusers_peft_floor, peft=None)``: fake installed diffusers/transformers files (the lines
    install.py reads, as in diffusers/dependency_versions_table.py and transformers/integrations/peft.py),
    peft at ``peft`` (None: not installed)."""
    real = installer.installed_version

    def make(floor: str | None, peft: str | None = None, diffusers: str = "0.37.1"):
        site = tmp_path / "site"
        if floor is not None:
            _fake_dist(site, "diffusers", diffusers, {
                "diffusers/dependency_versions_table.py":
                    f'deps = {{\n    "numpy": "numpy",\n    "peft": "peft>={floor}",\n}}\n'})
        _fake_dist(site, "transformers", "4.57.6", {
            "transformers/integrations/peft.py": 'logger = None\n\nMIN_PEFT_VERSION = "0.5.0"\n'})
        monkeypatch.syspath_prepend(str(site))
        versions = {"peft": peft, "diffusers": diffusers if floor is not None else None}
        monkeypatch.setattr(installer, "installed_version",
                            lambda name: versions[name] if name in versions else real(name))
    return make


def test_neo_pins_come_from_requirements_txt(installer, monkeypatch, tmp_path):
    (tmp_path / "requirements.txt").write_text(NEO_REQUIREMENTS)
    names = installer.host_pins([tmp_path])
    assert {"diffusers", "GitPython", "audioop-lts", "pydantic-core", "torch"} <= set(names)
    pins = dict(line.split("==") for line in installer.constraints(names))
    from importlib.metadata import version

    assert pins["diffusers"] == version("diffusers") and "audioop-lts" not in pins  # not installed: no line


def test_peft_for_diffusers_037_is_one_it_imports_with(installer, host_stack, tmp_path):
    (tmp_path / "requirements.txt").write_text(NEO_REQUIREMENTS)
    host_stack("0.17.0")
    assert installer.peft_floors() == {"diffusers": "0.17.0", "transformers": "0.5.0"}
    assert installer.missing_requirements(installer.host_pins([tmp_path])) == ["peft==0.17.1"]


def test_peft_older_than_diffusers_allows_is_replaced(installer, host_stack, tmp_path):
    """What the previous install.py left in a newest Neo (peft 0.13.2 beside diffusers 0.37): Neo did not start."""
    (tmp_path / "requirements.txt").write_text(NEO_REQUIREMENTS)
    host_stack("0.17.0", peft="0.13.2")
    assert installer.missing_requirements(installer.host_pins([tmp_path])) == ["peft==0.17.1"]


def test_peft_pinned_by_the_host_is_never_moved(installer, host_stack, tmp_path):
    (tmp_path / "requirements.txt").write_text(NEO_REQUIREMENTS + "peft==0.13.2\n")
    host_stack("0.17.0", peft="0.13.2")
    assert installer.missing_requirements(installer.host_pins([tmp_path])) == []


def test_forge_and_a1111_keep_their_pairs(installer, host_stack, tmp_path):
    host_stack("0.6.0", peft="0.13.2", diffusers="0.31.0")  # Forge: diffusers 0.31 accepts peft >= 0.6
    assert installer.missing_requirements([]) == []


def test_a1111_without_diffusers_gets_the_tested_pair(installer, host_stack):
    host_stack(None)
    assert installer.missing_requirements([]) == ["diffusers==0.31.0", "peft==0.13.2"]


def test_a_floor_beyond_tested_peft_asks_pip_for_it(installer, host_stack):
    host_stack("0.19.0", diffusers="0.40.0")
    assert installer.missing_requirements([]) == ["peft>=0.19.0"]


def test_neo_install_goes_through_its_run_pip(installer, host_stack, fake_neo, tmp_path, monkeypatch):
    """In Neo (fake_neo's launch.py / modules/launch_utils.py): one pip call through Neo's run_pip, with a
    peft diffusers 0.37 accepts and every installed package of Neo's requirements.txt held where it is."""
    from modules import launch_utils

    webui = tmp_path / "neo"
    webui.mkdir()
    (webui / "requirements.txt").write_text(NEO_REQUIREMENTS)
    monkeypatch.chdir(webui)
    monkeypatch.setenv("PYTHONPATH", str(webui))
    host_stack("0.17.0")
    seen = {}

    def run(command, desc=None, errdesc=None, custom_env=None, live=False):
        seen["command"] = command
        seen["constraints"] = Path(command.split(" -c ")[1].split()[0].strip('"')).read_text().split()
        return ""

    monkeypatch.setattr(launch_utils, "run", run)
    assert installer.main() == 0
    assert seen["command"].startswith(f'"{sys.executable}" -m pip install peft==0.17.1 -c '), seen["command"]
    pins = {installer._key(name): v for name, v in (line.split("==") for line in seen["constraints"])}
    assert pins["diffusers"] == "0.37.1"
    for line in NEO_REQUIREMENTS.split():  # every one of Neo's requirements that is installed stays where it is
        name = line.split("==")[0]
        assert pins.get(installer._key(name)) == installer.installed_version(name), name


# ---- the real thing: a venv holding A1111 1.10's pins -------------------------------------
A1111_PINS = ["transformers==4.30.2", "accelerate==0.21.0", "safetensors==0.4.2", "numpy==1.26.2",
              "huggingface_hub==0.36.2", "Pillow==9.5.0", "tokenizers==0.13.3", "torch==2.13.0"]


def _freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return {row["name"].lower().replace("_", "-"): row["version"] for row in json.loads(out)}


def _venv(tmp_path: Path, pins: list[str]) -> Path:
    """A venv holding ``pins`` (pip's own cache keeps reruns quick); returns its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True, timeout=1800)
    return python


def _install(python: Path, webui: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run install.py as the WebUI does: same python, cwd and PYTHONPATH = webui root."""
    return subprocess.run([str(python), str(INSTALL)], cwd=webui, env={**os.environ, "PYTHONPATH": str(webui)},
                          capture_output=True, text=True, timeout=timeout)


def _assert_pins_kept(after: dict[str, str], pins: list[str]) -> None:
    for pin in pins:
        name, version = pin.split("==")
        assert after[name.lower().replace("_", "-")].split("+")[0] == version, pin


@pytest.mark.slow
def test_a1111_pins_survive_two_runs(tmp_path):
    python = _venv(tmp_path, A1111_PINS)
    webui = tmp_path / "webui"
    webui.mkdir()
    (webui / "requirements_versions.txt").write_text("\n".join(A1111_PINS[:-1] + ["torch"]) + "\n")
    before = _freeze(python)
    first = _install(python, webui)
    assert first.returncode == 0, first.stdout + first.stderr
    after = _freeze(python)
    _assert_pins_kept(after, A1111_PINS)
    assert after["diffusers"] == "0.31.0" and after["peft"] == "0.13.2" and "gguf" in after
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}  # nothing that was there moved
    second = _install(python, webui, timeout=300)
    assert second.returncode == 0 and second.stdout == "", second.stdout
    assert _freeze(python) == after
    check = subprocess.run([str(python), "-c", "import diffusers, peft, transformers; print(transformers.__version__)"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and check.stdout.strip() == "4.30.2", check.stderr[-2000:]


# Forge Neo's newest pins that matter here (its requirements.txt lists no peft).
NEO_PINS = ["diffusers==0.37.1", "transformers==4.57.6", "accelerate==1.14.0", "safetensors==0.8.0", "numpy==2.3.5",
            "huggingface-hub==0.36.2", "Pillow==12.3.0", "torch==2.13.0"]
# What Neo itself does with peft beside them: diffusers 0.37 imports peft and checks its version.
NEO_IMPORT = "import diffusers, transformers, peft; from diffusers.utils import constants; print(peft.__version__)"


@pytest.mark.slow
def test_neo_newest_pins_still_import_after_install(tmp_path):
    """Neo with diffusers 0.37.1 and no peft: install.py adds a peft diffusers accepts and moves no pin;
    a peft 0.13.2 left by an older install.py (Neo then refused to start) is replaced at the next launch."""
    python = _venv(tmp_path, NEO_PINS)
    webui = tmp_path / "webui"
    webui.mkdir()
    (webui / "requirements.txt").write_text(NEO_REQUIREMENTS)
    before = _freeze(python)
    first = _install(python, webui)
    assert first.returncode == 0, first.stdout + first.stderr
    after = _freeze(python)
    _assert_pins_kept(after, NEO_PINS)
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}
    assert "gguf" in after and tuple(int(x) for x in after["peft"].split(".")[:2]) >= (0, 17), after.get("peft")
    check = subprocess.run([str(python), "-c", NEO_IMPORT], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    assert _install(python, webui, timeout=300).stdout == ""  # next launch: nothing to do

    subprocess.run([str(python), "-m", "pip", "install", "-q", "peft==0.13.2"], check=True, timeout=600)
    broken = subprocess.run([str(python), "-c", NEO_IMPORT], capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0 and "peft>=0.17.0 is required" in broken.stderr, broken.stderr[-2000:]
    repair = _install(python, webui)
    assert repair.returncode == 0 and "peft==" in repair.stdout, repair.stdout + repair.stderr
    _assert_pins_kept(_freeze(python), NEO_PINS)
    check = subprocess.run([str(python), "-c", NEO_IMPORT], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
