"""Issue 22 as an attacker would try it: REST, the tab and Convert write only inside the host's folders, read
only from them when the WebUI is reachable from the network, and refuse what a foreign web page can send."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from extension.api import MAX_BODY, PREFIX, register
from extension.jobs import JobManager
from extension.ui.handlers import Handlers
from extension.ui.host import Host

EVIL = "http://evil.example"


@pytest.fixture
def site(tmp_path, runner_factory):
    """A standalone host (Lora folder ``tmp_path/loras``, nothing added) behind the REST routes."""
    def make(api_auth=None, host=None, origins=()):
        host = host or Host(output_dir=tmp_path / "loras", jobs=JobManager(runner=runner_factory(steps=2)))
        host.output_dir.mkdir(parents=True, exist_ok=True)
        app = FastAPI()
        register(app, host, api_auth=lambda: api_auth, origins=lambda: origins)
        return TestClient(app), host

    return make


def _victim(folder):
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "sub" / "keep.py").write_text("x = 1\n")
    return folder


def _intact(folder) -> bool:
    return (folder / "notes.txt").read_text() == "mine" and (folder / "sub" / "keep.py").is_file()


# ---- REST: /convert (item 1) --------------------------------------------------------------------------
def test_convert_force_outside_the_allowed_folders_is_400_and_the_folder_survives(site, tmp_path, tiny_lora):
    client, _ = site()
    victim = _victim(tmp_path / "victim")
    answer = client.post(f"{PREFIX}/convert", json={"src": str(tiny_lora), "dst": str(victim), "to": "peft",
                                                    "force": True})
    assert answer.status_code == 400, answer.text
    assert "outside the folders LoRA Bridge writes to" in answer.json()["error"] and _intact(victim)


def test_convert_force_onto_a_non_adapter_folder_inside_the_lora_folder_is_400(site, tmp_path, tiny_lora):
    client, host = site()
    victim = _victim(host.output_dir / "victim")
    answer = client.post(f"{PREFIX}/convert", json={"src": str(tiny_lora), "dst": str(victim), "to": "peft",
                                                    "force": True})
    assert answer.status_code == 400 and "not part of an adapter" in answer.json()["error"], answer.text
    assert _intact(victim)
    script = host.output_dir / "run.py"
    script.write_text("print('mine')\n")
    answer = client.post(f"{PREFIX}/convert", json={"src": str(tiny_lora), "dst": str(script), "to": "kohya",
                                                    "force": True})
    assert answer.status_code == 400 and ".py file" in answer.json()["error"], answer.text
    assert script.read_text() == "print('mine')\n"


def test_convert_into_the_lora_folder_still_works(site, tiny_lora):
    client, host = site()
    dst = str(host.output_dir / "c.safetensors")
    answer = client.post(f"{PREFIX}/convert", json={"src": str(tiny_lora), "dst": dst, "to": "kohya"})
    assert answer.status_code == 200, answer.text
    again = client.post(f"{PREFIX}/convert", json={"src": str(tiny_lora), "dst": dst, "to": "kohya", "force": True})
    assert again.status_code == 200, again.text  # an adapter may be replaced


# ---- REST: what a foreign page can send (item 1, 16) -----------------------------------------------------
def test_text_plain_from_a_foreign_origin_is_refused_and_nothing_runs(site, tmp_path, tiny_lora):
    client, host = site()
    dst = host.output_dir / "csrf.safetensors"
    body = json.dumps({"src": str(tiny_lora), "dst": str(dst), "to": "kohya"})
    foreign = client.post(f"{PREFIX}/convert", content=body, headers={"Content-Type": "text/plain", "Origin": EVIL})
    assert foreign.status_code == 403, foreign.text
    plain = client.post(f"{PREFIX}/convert", content=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415, plain.text
    form = client.post(f"{PREFIX}/stop", content="save=false",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert not dst.exists()
    json_foreign = client.post(f"{PREFIX}/convert", content=body,
                               headers={"Content-Type": "application/json", "Origin": EVIL})
    assert json_foreign.status_code == 403 and not dst.exists()
    own = client.post(f"{PREFIX}/convert", content=body,
                      headers={"Content-Type": "application/json; charset=utf-8", "Origin": "http://testserver"})
    assert own.status_code == 200, own.text
    assert client.post(f"{PREFIX}/stop").status_code == 200  # curl -X POST with no body


def test_an_origin_the_user_allowed_with_cors_flags_passes(site):
    client, _ = site(origins=["http://localhost:5173", r"re:https://.*\.example\.org"])
    for origin in ("http://localhost:5173", "https://ui.example.org"):
        assert client.get(f"{PREFIX}/status", headers={"Origin": origin}).status_code == 200
    assert client.get(f"{PREFIX}/status", headers={"Origin": EVIL}).status_code == 403


def test_api_auth_without_a_pair_closes_the_routes_and_says_why_once(site, caplog):
    client, _ = site(api_auth="admin")
    with caplog.at_level(logging.ERROR, logger="lora_bridge.api"):
        for method, route in (("get", "status"), ("post", "stop"), ("post", "convert"), ("get", "inspect")):
            answer = getattr(client, method)(f"{PREFIX}/{route}")
            assert answer.status_code == 403 and "--api-auth" in answer.json()["error"], route
    assert sum("no user:password pair" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("payload", [
    {"src": "a\x00b.safetensors", "dst": "out.safetensors"},
    {"src": "/tmp/" + "x" * 5000, "dst": "out.safetensors"},
    {"src": "/tmp/" + "y" * 300 + ".safetensors", "dst": "out.safetensors"},
    {"src": {"nested": ["json"]}, "dst": "out.safetensors"},
    {"src": ["a"], "dst": 5},
    {"src": "a.safetensors", "dst": "b.safetensors", "to": {"x": 1}},
    {"src": "a.safetensors", "dst": "b.safetensors", "force": "yes"},
])
def test_bad_convert_paths_and_values_are_400(site, payload):
    client, _ = site()
    answer = client.post(f"{PREFIX}/convert", json=payload)
    assert answer.status_code == 400, answer.text
    assert "\n" not in answer.json()["error"]


@pytest.mark.parametrize("payload", [{"path": "a\x00b"}, {"path": {"a": 1}}, {"path": "p" * 5000},
                                     {"path": "x.safetensors", "base": ["list"]}])
def test_bad_inspect_paths_are_400(site, payload):
    client, _ = site()
    assert client.post(f"{PREFIX}/inspect", json=payload).status_code == 400
    if isinstance(payload["path"], str):
        assert client.get(f"{PREFIX}/inspect", params=payload).status_code == 400


def test_deeply_nested_json_and_bad_values_are_400(site):
    client, _ = site()
    deep = "[" * 100_000 + "]" * 100_000
    answer = client.post(f"{PREFIX}/start", content=deep, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert client.post(f"{PREFIX}/stop", json={"save": "no"}).status_code == 400
    assert client.post(f"{PREFIX}/start", json={"base_model": {"a": 1}}).status_code == 400
    assert client.post(f"{PREFIX}/start", json={"output_dir": "a\x00b", "output_name": "x"}).status_code == 400


# ---- REST: /start reads and writes (item 1) -------------------------------------------------------------
def test_start_with_an_output_dir_outside_is_400_and_creates_nothing(site, tmp_path, dataset, tiny_base):
    client, host = site()
    config = {"base_model": str(tiny_base), "train_data_dir": str(dataset), "output_name": "x",
              "output_dir": str(tmp_path / "elsewhere" / "run")}
    answer = client.post(f"{PREFIX}/start", json=config)
    assert answer.status_code == 400 and "output_dir is outside" in answer.json()["error"], answer.text
    assert not (tmp_path / "elsewhere").exists() and host.jobs.status()["state"] == "idle"
    logging_elsewhere = {**config, "output_dir": str(host.output_dir / "run"), "logging_dir": str(tmp_path / "logs")}
    assert client.post(f"{PREFIX}/start", json=logging_elsewhere).status_code == 400
    inside = client.post(f"{PREFIX}/start", json={**config, "output_dir": str(host.output_dir / "run")})
    assert inside.status_code == 200, inside.text
    assert host.jobs.wait(30)["state"] == "done"


# ---- REST: body size (item 16), through a real server ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(site):
    """The routes on a real uvicorn on 127.0.0.1 (as the WebUI serves them)."""
    import uvicorn

    client, host = site()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def _send(port: int, head: bytes, chunks, timeout: float = 5.0) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` until the server answers; (status line, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        for chunk in chunks:
            try:
                answer = sock.recv(4096)
                if answer:
                    return answer.split(b"\r\n", 1)[0], sent
            except BlockingIOError:
                pass
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(timeout)
        try:
            return sock.recv(4096).split(b"\r\n", 1)[0], sent
        except (TimeoutError, ConnectionResetError):
            return b"", sent


def test_a_200_mb_body_is_413_without_being_read(served):
    size = 200 * 1024 * 1024
    head = (f"POST {PREFIX}/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    started = time.monotonic()
    status, sent = _send(served, head, (b" " * 65536 for _ in range(32)))  # 2 MB of the 200 announced
    assert b" 413 " in status + b" ", status
    assert time.monotonic() - started < 5 and sent <= 2 * 1024 * 1024


def test_a_chunked_body_is_cut_at_the_limit(served):
    head = (f"POST {PREFIX}/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = b" " * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, sent = _send(served, head, (chunk for _ in range(3200)))  # up to 200 MB
    assert b" 413 " in status + b" ", status
    assert sent < 64 * MAX_BODY


# ---- the WebUI's flags (items 1, 2) ---------------------------------------------------------------------
def _webui_site(tmp_path, runner_factory, **flags):
    from modules import shared

    from extension.webui.host import WebUIHost

    shared.opts.data["lora_bridge_extra_folders"] = ""
    defaults = {"listen": False, "share": False, "server_name": None, "ngrok": None,
                "enable_insecure_extension_access": False}
    for key, value in {**defaults, **flags}.items():
        setattr(shared.cmd_opts, key, value)
    shared.derive_cmd_opts()
    host = WebUIHost(jobs=JobManager(runner=runner_factory(steps=2)))
    app = FastAPI()
    register(app, host)
    return TestClient(app), host


def test_reads_are_limited_to_the_webui_folders_under_listen(fake_webui, tmp_path, tiny_lora, runner_factory):
    outside = str(tiny_lora)  # a file in another temporary folder: not a WebUI folder
    client, host = _webui_site(tmp_path, runner_factory, listen=True)
    answer = client.get(f"{PREFIX}/inspect", params={"path": outside})
    assert answer.status_code == 400 and "--listen without --enable-insecure-extension-access" in answer.text
    inside = host.lora_dir() / "mine.safetensors"
    inside.write_bytes(tiny_lora.read_bytes())
    assert client.get(f"{PREFIX}/inspect", params={"path": str(inside)}).status_code == 200
    assert Handlers(host).inspect(outside, "").startswith("⚠️")  # the tab's Convert sub-tab too

    client, _ = _webui_site(tmp_path, runner_factory, listen=True, enable_insecure_extension_access=True)
    assert client.get(f"{PREFIX}/inspect", params={"path": outside}).status_code == 200
    client, _ = _webui_site(tmp_path, runner_factory, listen=False, enable_insecure_extension_access=False)
    assert client.get(f"{PREFIX}/inspect", params={"path": outside}).status_code == 200  # localhost: anywhere
    for flag in ({"share": True}, {"server_name": "0.0.0.0"}, {"ngrok": "token"}):
        client, _ = _webui_site(tmp_path, runner_factory, **flag)
        assert client.get(f"{PREFIX}/inspect", params={"path": outside}).status_code == 400, flag


def test_start_under_listen_refuses_a_dataset_outside(fake_webui, tmp_path, dataset, tiny_base, runner_factory):
    client, host = _webui_site(tmp_path, runner_factory, listen=True)
    config = {"base_model": str(tiny_base), "train_data_dir": str(dataset), "output_name": "x"}
    answer = client.post(f"{PREFIX}/start", json=config)
    assert answer.status_code == 400 and "base_model" in answer.json()["error"], answer.text
    assert host.jobs.status()["state"] == "idle"


def test_settings_extra_folders_allow_writes_and_cannot_be_set_over_the_api(fake_webui, tmp_path, tiny_lora,
                                                                            runner_factory):
    from modules import shared

    from extension.webui import callbacks

    callbacks.on_ui_settings()
    info = shared.opts.data_labels["lora_bridge_extra_folders"]
    assert info.restrict_api and "lora_bridge_extra_folders" in shared.restricted_opts
    assert not shared.opts.set("lora_bridge_extra_folders", "/", is_api=True)  # POST /sdapi/v1/options
    shared.cmd_opts.hide_ui_dir_config = True
    assert not shared.opts.set("lora_bridge_extra_folders", "/")  # the settings page, --hide-ui-dir-config
    shared.cmd_opts.hide_ui_dir_config = False
    client, host = _webui_site(tmp_path, runner_factory)
    dst = tmp_path / "mine" / "out.safetensors"
    dst.parent.mkdir()
    request = {"src": str(tiny_lora), "dst": str(dst), "to": "kohya"}
    assert client.post(f"{PREFIX}/convert", json=request).status_code == 400
    shared.opts.data["lora_bridge_extra_folders"] = f"{tmp_path / 'other'}\n{tmp_path / 'mine'}"
    assert client.post(f"{PREFIX}/convert", json=request).status_code == 200 and dst.is_file()
    llm = host.path_policy().writable(tmp_path / "models" / "LLM" / "a.gguf", "x")  # the host's own folders
    assert llm.name == "a.gguf"


def test_cors_flags_become_allowed_origins(fake_webui):
    from modules import shared

    from extension.webui.callbacks import allowed_origins

    shared.cmd_opts.cors_allow_origins = "http://a.local:1,http://b.local"
    shared.cmd_opts.cors_allow_origins_regex = r"https://.*\.lan"
    assert allowed_origins(shared.cmd_opts) == ["http://a.local:1", "http://b.local", r"re:https://.*\.lan"]


# ---- the tab (item 2) -----------------------------------------------------------------------------------
def test_save_yaml_writes_only_yaml_inside_the_allowed_folders(tmp_path):
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager())
    handlers = Handlers(host)
    payload = "import os\nos.system('echo owned')\n"  # also valid YAML (one string)
    script = tmp_path / "extensions" / "x" / "install.py"
    script.parent.mkdir(parents=True)
    script.write_text("pass\n")
    for target in (script, host.output_dir / "install.py", tmp_path / "outside.yaml"):
        assert handlers.save_yaml(payload, str(target)).startswith("⚠️"), target
    assert script.read_text() == "pass\n" and not (host.output_dir / "install.py").exists()
    assert not (tmp_path / "outside.yaml").exists()
    (host.output_dir / "dir.yaml").mkdir(parents=True)
    assert handlers.save_yaml("a: 1\n", str(host.output_dir / "dir.yaml")).startswith("⚠️")
    link = host.output_dir / "link.yaml"
    link.symlink_to(script)
    assert handlers.save_yaml("a: 1\n", str(link)).startswith("⚠️") and script.read_text() == "pass\n"
    ok = handlers.save_yaml("a: 1\n", str(host.output_dir / "cfg.yml"))
    assert ok.startswith("saved") and (host.output_dir / "cfg.yml").read_text() == "a: 1\n"


def test_tab_convert_and_caption_writes_outside_are_refused(tmp_path, tiny_lora, dataset):
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager())
    handlers = Handlers(host)
    victim = _victim(tmp_path / "victim")
    assert "outside the folders" in handlers.convert(str(tiny_lora), str(victim), "peft", "", "", "", True)
    assert _intact(victim)
    image = next(p for p in dataset.rglob("*.png"))
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    assert handlers.save_caption(str(dataset), str(image), "owned").startswith("⚠️")
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before


# ---- the standalone app (item 13c) ----------------------------------------------------------------------
def test_standalone_app_serves_only_its_own_folders(tmp_path):
    import gradio

    from extension.ui.standalone import build_app

    secret = tmp_path / "secret.txt"  # under the temp folder, outside the app's folders
    secret.write_text("token")
    app, host, extra = build_app(None, str(tmp_path / "out"))
    mine = host.output_dir / "sample.txt"
    mine.write_text("ok")
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **extra)
    route = "/gradio_api/file=" if int(gradio.__version__.split(".")[0]) >= 5 else "/file="
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{route}{secret}", timeout=30)
        assert refused.value.code in (403, 404)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}{route}{mine}", timeout=30).read() == b"ok"
    finally:
        app.close()


def test_standalone_reads_are_restricted_when_served_beyond_localhost(tmp_path, tiny_lora):
    from extension.ui.standalone import is_local

    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost") and not is_local("0.0.0.0")
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager(), local_only=False)
    assert "lora-bridge ui --host" in Handlers(host).inspect(str(tiny_lora), "")


def test_links_the_user_put_into_model_folders_are_read_but_never_written_through(fake_webui, tmp_path, tiny_lora,
                                                                                    runner_factory):
    """Checkpoints linked into models/ from a shared folder stay readable under --listen (found on real A1111);
    a write through a link leaving the folders, and ``..`` out of a folder, are refused."""
    client, host = _webui_site(tmp_path, runner_factory, listen=True)
    linked = host.lora_dir() / "linked.safetensors"
    linked.symlink_to(tiny_lora)
    assert client.get(f"{PREFIX}/inspect", params={"path": str(linked)}).status_code == 200
    escape = f"{host.lora_dir()}/../../../{tiny_lora.parent.name}/{tiny_lora.name}"
    assert client.get(f"{PREFIX}/inspect", params={"path": escape}).status_code == 400
    outside = tmp_path / "outside"
    outside.mkdir()
    (host.lora_dir() / "out_link").symlink_to(outside)
    request = {"src": str(linked), "dst": str(host.lora_dir() / "out_link" / "x.safetensors"), "to": "kohya"}
    answer = client.post(f"{PREFIX}/convert", json=request)
    assert answer.status_code == 400 and "outside the folders" in answer.json()["error"]
    assert not list(outside.iterdir())


def test_exposed_by_follows_a1111s_rule():
    """modules/shared_cmd_options.py: non-local = share/listen/ngrok/server_name; the WebUI's own
    ``disable_extension_access`` wins when it set one (A1111 1.10.1 and Forge always do)."""
    from types import SimpleNamespace

    from extension.webui.host import exposed_by

    flags = {"share": False, "listen": False, "ngrok": None, "server_name": None,
             "enable_insecure_extension_access": False}
    assert exposed_by(SimpleNamespace(**flags)) == ""
    assert exposed_by(SimpleNamespace(**{**flags, "listen": True})).startswith("--listen without")
    assert exposed_by(SimpleNamespace(**{**flags, "share": True, "enable_insecure_extension_access": True})) == ""
    assert exposed_by(SimpleNamespace(**{**flags, "listen": True, "disable_extension_access": False})) == ""
    assert exposed_by(SimpleNamespace(disable_extension_access=True)).startswith("non-local WebUI")


def test_generate_under_listen_reads_only_the_webui_folders(fake_webui, tmp_path, tiny_lora, runner_factory):
    """Try (REST /generate, the tab's panel) opens the base and the adapter: the same read rule as Inspect."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    base = outside / "base.gguf"
    base.write_bytes(b"GGUF")
    client, host = _webui_site(tmp_path, runner_factory, listen=True)
    answer = client.post(f"{PREFIX}/generate", json={"base": str(base), "lora": str(tiny_lora), "prompt": "hi"})
    assert answer.status_code == 400 and "base model is outside the folders" in answer.json()["error"], answer.text
    inside = host.lora_dir() / "base.gguf"
    inside.write_bytes(b"GGUF")
    answer = client.post(f"{PREFIX}/generate", json={"base": str(inside), "lora": str(tiny_lora), "prompt": "hi"})
    assert answer.status_code == 400 and "adapter is outside the folders" in answer.json()["error"], answer.text


def test_a_ggml_bases_copy_goes_beside_it_only_inside_the_write_folders(tmp_path, tiny_gguf, runner_factory):
    """A legacy GGML base is readable anywhere on localhost, but its GGUF copy is a write: beside the base only
    when that folder is one LoRA Bridge writes to, else in the run folder (``ggml_copy_beside_base``)."""
    import shutil

    seen = []

    def runner(cfg, callback, control):
        seen.append(cfg.ggml_copy_beside_base)
        return runner_factory(steps=1)(cfg, callback, control)

    host = Host(output_dir=tmp_path / "loras", jobs=JobManager(runner=runner))
    data = host.output_dir / "t.txt"
    data.parent.mkdir(parents=True)
    data.write_text("hello world\n" * 20)
    inside = host.output_dir / "tiny.gguf"
    shutil.copy(tiny_gguf, inside)
    for base, name in ((tiny_gguf, "out"), (inside, "in")):
        host.start_job({"task_type": "text-generation", "base_model": str(base), "train_data_dir": str(data),
                        "output_name": name})
        assert host.jobs.wait(30)["state"] == "done"
    assert seen == [False, True]


def test_save_yaml_bare_name_goes_beside_the_runs(tmp_path, monkeypatch):
    """The box's placeholder is a bare name (``my_lora.yaml``): it is saved into the runs folder and imported
    from there, not refused for lying in the WebUI's working folder (seen in real A1111 1.10.1)."""
    monkeypatch.chdir(tmp_path)
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager())
    handlers = Handlers(host)
    runs = host.work_dir("x", "text-to-image").parent
    answer = handlers.save_yaml("output_name: cats\n", "my_lora.yaml")
    assert answer == f"saved {runs.resolve() / 'my_lora.yaml'}", answer
    assert not (tmp_path / "my_lora.yaml").exists()
    assert handlers.import_yaml("my_lora.yaml")[0] == f"imported {runs / 'my_lora.yaml'}"
    assert handlers.save_yaml("a: 1\n", "sub/x.yaml").startswith("⚠️")  # a relative folder stays relative to cwd


@pytest.mark.parametrize(("flags", "host_header", "status"), [
    ({}, "127.0.0.1:7860", 200), ({}, "localhost:7860", 200), ({}, "[::1]:7860", 200), ({}, "lb.localhost", 200),
    ({}, "rebind.example:7860", 403), ({}, "127.0.0.1.example:7860", 403), ({}, "192.168.1.5:7860", 403),
    ({"listen": True}, "192.168.1.5:7860", 200), ({"share": True}, "abc.gradio.live", 200),
])
def test_a_dns_rebinding_page_is_refused_by_a_local_webui(fake_webui, flags, host_header, status):
    """A page at rebind.example that re-resolves its name to 127.0.0.1 sends its own name as Host and as Origin,
    so the origin check passes; without --listen/--share/--ngrok/--server-name only loopback names reach us."""
    from modules import script_callbacks, shared

    from extension.webui import callbacks

    for key in ("listen", "share", "server_name", "ngrok"):
        setattr(shared.cmd_opts, key, flags.get(key, None if key in ("server_name", "ngrok") else False))
    shared.cmd_opts.api = True
    callbacks.register()
    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    client = TestClient(app)
    got = client.get(f"{PREFIX}/status", headers={"Host": host_header, "Origin": f"http://{host_header}"})
    assert got.status_code == status, got.text
    if status == 403:
        assert "Host is not this computer" in got.json()["error"]


def test_neo_model_folder_flags_are_read_under_listen(fake_neo, tmp_path_factory, tiny_lora):
    """Forge Neo names extra model folders with repeatable flags (modules/cmd_args.py: --ckpt-dirs, --lora-dirs,
    --vae-dirs, --text-encoder-dirs, lists; no --ckpt-dir). Under --listen their files are WebUI folders to read,
    as models/ is; a folder no flag names stays refused."""
    from modules import shared

    from extension.errors import UserError
    from extension.webui.host import WebUIHost

    shared.opts.data["lora_bridge_extra_folders"] = ""
    shared.cmd_opts.listen = True
    shared.derive_cmd_opts()  # the WebUI's own disable_extension_access
    drive = tmp_path_factory.mktemp("drive")
    flags = ("ckpt_dirs", "lora_dirs", "vae_dirs", "text_encoder_dirs")
    for flag in flags:
        (drive / flag).mkdir()
        (drive / flag / "model.safetensors").write_bytes(tiny_lora.read_bytes())
        getattr(shared.cmd_opts, flag).append(str(drive / flag))
    policy = WebUIHost().path_policy()
    for flag in flags:
        assert policy.readable(drive / flag / "model.safetensors", flag) == (drive / flag / "model.safetensors")
    (drive / "other").mkdir()
    with pytest.raises(UserError, match="outside the folders LoRA Bridge reads"):
        policy.readable(drive / "other" / "model.safetensors", "base_model")
