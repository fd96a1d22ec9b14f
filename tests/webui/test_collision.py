"""The entry script in a process that already holds another extension's top-level ``extension`` and
``converters`` modules: our tab still registers and works, theirs stay untouched, Reload UI keeps state.
Runs in a subprocess so the aliases never leak into other tests."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys, types

    root, fake, lora = sys.argv[1:4]
    sys.path.insert(0, fake)
    foreign = {}
    for name in ("extension", "converters"):
        module = types.ModuleType(name)
        module.__path__ = []  # a package of someone else's
        module.FOREIGN = True
        sys.modules[name] = foreign[name] = module

    def run_script():  # what the WebUI does for scripts/*.py (and again on Reload UI)
        spec = importlib.util.spec_from_file_location("lora_bridge.py", root + "/scripts/lora_bridge.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

    from modules import script_callbacks
    run_script()
    tabs = script_callbacks.ui_tabs_callback()
    handlers = tabs[0][0].lora_bridge_handlers
    report = json.loads(handlers.inspect(lora, ""))
    jobs_before = sys.modules["lora_bridge_extension"].jobs.JOBS

    script_callbacks.clear_callbacks()  # Reload UI
    run_script()
    tabs_again = script_callbacks.ui_tabs_callback()
    print(json.dumps({
        "tabs": [[t[1], t[2]] for t in tabs_again],
        "modules": report["modules"],
        "foreign_kept": all(sys.modules[n] is foreign[n] for n in foreign),
        "ours": sys.modules["lora_bridge_extension"].__file__,
        "converters_alias": sys.modules["lora_bridge_extension._converters"].converters.__name__,
        "same_jobs": sys.modules["lora_bridge_extension"].jobs.JOBS is jobs_before,
        "error_class_ok": issubclass(sys.modules["lora_bridge_extension"].errors.UserError,
                                     sys.modules["lora_bridge_converters"].AdapterError),
    }))
""")


def test_entry_script_survives_foreign_modules_and_reload(tiny_lora, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(HERE / "fake_webui"), str(tiny_lora)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tabs"] == [["LoRA Training", "lora_training"]]
    assert result["modules"] == 4
    assert result["foreign_kept"] and result["same_jobs"] and result["error_class_ok"]
    assert result["ours"] == str(ROOT / "extension" / "__init__.py")
    assert result["converters_alias"] == "lora_bridge_converters"
