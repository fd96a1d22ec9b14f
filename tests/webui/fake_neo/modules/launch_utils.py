"""Mimics Forge Neo's modules/launch_utils.py (upstream neo branch): ``run_pip`` (``"python" -m pip COMMAND
--prefer-binary`` through ``run``, a shell command; nothing with ``--skip-install``), ``is_installed`` and
``requirements_met``, the check by which Neo re-installs its requirements.txt at launch when any pinned
version differs from the installed one."""

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from types import SimpleNamespace

python = sys.executable
index_url = ""
args = SimpleNamespace(skip_install=False)
CALLS = []


def run(command, desc=None, errdesc=None, custom_env=None, live=False):
    CALLS.append(command)
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=custom_env)
    if result.returncode != 0:
        raise RuntimeError(f"{errdesc or 'Error running command'}.\nCommand: {command}\n"
                           f"Error code: {result.returncode}\nstderr: {result.stderr}")
    return result.stdout or ""


def is_installed(package):
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    return run(f'"{python}" -m pip {command} --prefer-binary{index_url_line}', desc=f"Installing {desc}",
               errdesc=f"Couldn't install {desc}", live=live)


re_requirement = re.compile(r"\s*([-_a-zA-Z0-9]+)\s*(?:==\s*([-+_.a-zA-Z0-9]+))?\s*")


def requirements_met(requirements_file):
    import packaging.version

    with open(requirements_file, encoding="utf8") as file:
        for line in file:
            if line.strip() == "":
                continue
            m = re.match(re_requirement, line)
            if m is None:
                return False
            package = m.group(1).strip()
            version_required = (m.group(2) or "").strip()
            if version_required == "":
                continue
            try:
                version_installed = importlib.metadata.version(package)
            except Exception:
                return False
            if packaging.version.parse(version_required) != packaging.version.parse(version_installed):
                return False
    return True
