"""What a finished text run reports: the llama.cpp usage lines and the check result once, also when not checked."""

from __future__ import annotations

import pytest
from textutil import text_config

from extension.jobs import JobManager
from extension.text.llama_check import NOT_INSTALLED


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("the cat sat on the mat\nthe dog ran to the mat\n")
    return path


def test_missing_llama_cpp_is_reported_in_the_status_and_result(tiny, tmp_path, data, monkeypatch):
    """llama_cpp_check auto without llama-cpp-python: /status and the run result say it was not checked."""
    monkeypatch.setattr("extension.text.llama_check.llama_cpp_available", lambda: False)
    jobs = JobManager()
    jobs.start(text_config(tiny["Q4_0"], data, tmp_path / "out", llama_cpp_check="auto", max_train_steps=2))
    status = jobs.wait(300)
    assert status["state"] == "done"
    assert status["message"].count(NOT_INSTALLED) == 1
    assert status["message"].count("llama-cli -m") == 1
    assert sum(line.count("llama-cli -m") for line in status["log"]) == 1  # once in the log, not twice


def test_check_off_says_so(tiny, tmp_path, data):
    from extension.text.engine import train_text

    result = train_text(text_config(tiny["F32"], data, tmp_path / "out", max_train_steps=1), callback=lambda e: None)
    assert "not checked in llama.cpp (llama_cpp_check: off)" in result.message
