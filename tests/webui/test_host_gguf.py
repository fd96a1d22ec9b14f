"""Forge and Forge Neo bundle an older gguf-py and put it first on ``sys.path`` under the name ``gguf`` at startup
(Forge: ``packages_3rdparty/gguf``, ``modules_forge/initialization.py``; Neo 3df257ae: ``modules_forge/packages/gguf``,
the same file), and their GGUF loaders import it as ``gguf``. In the real Neo a qwen3 or gemma3 text run then
failed with "architecture 'qwen3' is unknown to the installed gguf-py" although install.py had installed gguf 0.19.
LoRA Bridge must use the installed gguf-py there while the host keeps its own copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The bundled copy as the host sees it: a package named gguf, older (Neo's stops at gemma2), with the absolute
# ``from gguf.constants import`` its gguf_reader.py has.
HOST_INIT = ('"""A WebUI\'s bundled gguf-py (stand-in)."""\n'
             "from .constants import *  # noqa\nfrom .gguf_reader import *  # noqa\n")
HOST_CONSTANTS = 'HOST_COPY = True\nMODEL_ARCH_NAMES = {}\n'
HOST_READER = 'from gguf.constants import HOST_COPY\n'

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])   # modules_forge/initialization.py: sys.path.insert(0, .../packages)
import gguf                       # the host's startup imports its copy (backend/utils.py: import gguf)
from extension.text.families import tensor_names
from extension.text.gguf_model import read_gguf_metadata
names = tensor_names("gemma3")
_, meta = read_gguf_metadata(__import__("pathlib").Path(sys.argv[2]))
print(json.dumps({"gemma3_attn_q": names.get("blk.{bid}.attn_q") is not None, "arch": meta["general.architecture"],
                  "host_gguf": getattr(sys.modules["gguf"], "HOST_COPY", False),
                  "host_constants": getattr(sys.modules["gguf.constants"], "HOST_COPY", False)}))
"""


def test_text_code_uses_the_installed_gguf_beside_the_hosts_copy(tmp_path, tiny_gguf):
    host = tmp_path / "packages" / "gguf"
    host.mkdir(parents=True)
    (host / "__init__.py").write_text(HOST_INIT)
    (host / "constants.py").write_text(HOST_CONSTANTS)
    (host / "gguf_reader.py").write_text(HOST_READER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(host.parent), str(tiny_gguf)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"gemma3_attn_q": True, "arch": "llama", "host_gguf": True, "host_constants": True}
