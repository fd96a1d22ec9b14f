"""REST ``POST /lora-bridge/v1/start`` accepts a Flux.1 config in the shared schema and trains it for real."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from flux_training_setup import flux_config

from extension.api import PREFIX, register
from extension.jobs import JobManager
from extension.ui.host import Host


def _client(tmp_path, **host_kw):
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager(), **host_kw)
    app = FastAPI()
    assert register(app, host, api_auth=lambda: None)
    return TestClient(app), host


def test_rest_start_trains_a_flux_lora_and_publishes_it(flux_files, flux_data, tmp_path):
    client, host = _client(tmp_path)
    config = flux_config(flux_files, flux_data, tmp_path / "loras" / "run", max_train_steps=2, sample_every_n_steps=0)
    answer = client.post(f"{PREFIX}/start", json=config)
    assert answer.status_code == 200, answer.text
    status = host.jobs.wait(600)
    assert status["state"] == "done", status["message"]
    assert len(status["losses"]) == 2
    assert (tmp_path / "loras" / "flux_t.safetensors").is_file()


def test_rest_refuses_a_missing_part_file_with_one_line(flux_files, flux_data, tmp_path):
    client, host = _client(tmp_path)
    missing = tmp_path / "t5xxl_fp16.safetensors"
    config = flux_config(flux_files, flux_data, tmp_path / "loras" / "run", t5xxl=str(missing))
    answer = client.post(f"{PREFIX}/start", json=config)
    assert answer.status_code == 400 and f"{missing}: T5-XXL text encoder not found" in answer.json()["error"]
    assert host.jobs.status()["state"] == "idle" and not (tmp_path / "loras" / "run").exists()


def test_rest_on_a_listening_server_reads_part_files_only_inside_allowed_folders(flux_files, flux_data, tmp_path):
    client, _ = _client(tmp_path, local_only=False, extra_folders=[flux_data.parent, flux_files["base_model"].parent])
    outside = tmp_path / "elsewhere" / "ae.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(flux_files["ae"].read_bytes())
    config = flux_config(flux_files, flux_data, tmp_path / "loras" / "run", ae=str(outside))
    answer = client.post(f"{PREFIX}/start", json=config)
    assert answer.status_code == 400 and "ae is outside the folders" in answer.json()["error"], answer.text
