"""Mimics Forge Neo's launch.py: re-exports of modules/launch_utils.py (what an extension's install.py uses)."""

from modules import launch_utils

args = launch_utils.args
python = launch_utils.python
is_installed = launch_utils.is_installed
run = launch_utils.run
run_pip = launch_utils.run_pip
