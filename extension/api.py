"""REST API under ``/lora-bridge/v1``: start, status, stop, convert, inspect, generate.

Plain ``Request``/``JSONResponse`` handlers (no pydantic models), so one module serves fastapi 0.94
with pydantic 1 (A1111), 0.104 with pydantic 2 (Forge) and current releases. The WebUI's
``--api-auth`` guards only its own routes; these check it themselves (HTTP basic).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ._converters import converters
from .jobs import JobBusyError
from .ui.wording import for_rest

log = logging.getLogger("lora_bridge.api")

PREFIX = "/lora-bridge/v1"


def parse_credentials(api_auth: str | None) -> dict[str, str]:
    """``"user:pass,user2:pass2"`` (the WebUI's --api-auth format) -> {user: password}."""
    out: dict[str, str] = {}
    for item in (api_auth or "").split(","):
        item = item.strip()
        if ":" in item:
            user, password = item.split(":", 1)
            out[user] = password
    return out


def authorized(header: str | None, credentials: dict[str, str]) -> bool:
    """True when no credentials are configured, or the Basic ``Authorization`` header matches one."""
    if not credentials:
        return True
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = credentials.get(user)
    return expected is not None and secrets.compare_digest(expected.encode(), password.encode())


def register(app: Any, host: Any, api_auth: Callable[[], str | None] = lambda: None) -> bool:
    """Add the routes to a FastAPI ``app`` (once per app); ``api_auth()`` returns the WebUI's --api-auth.

    Returns False when the routes were already there (Reload UI calls ``on_app_started`` again).
    """
    if any(getattr(route, "path", "") == PREFIX + "/status" for route in getattr(app, "routes", [])):
        return False

    def guard(request: Request) -> JSONResponse | None:
        if authorized(request.headers.get("authorization"), parse_credentials(api_auth())):
            return None
        return JSONResponse({"error": "unauthorized"}, status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="lora-bridge"'})

    def fail(exc: Exception) -> JSONResponse:
        if isinstance(exc, JobBusyError):
            log.warning("LoRA Bridge API: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=409)
        if isinstance(exc, converters.AdapterError):  # the caller's input: one line, no traceback
            log.warning("LoRA Bridge API: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        log.exception("LoRA Bridge API error")
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise converters.AdapterError(f"request body is not valid JSON ({exc}); send a JSON object") from None
        if not isinstance(data, dict):
            raise converters.AdapterError("request body must be a JSON object")
        return data

    def route(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """One endpoint: auth first, then the handler's result as JSON, errors as one-line JSON."""

        async def endpoint(request: Request) -> JSONResponse:
            denied = guard(request)
            if denied:
                return denied
            try:
                return JSONResponse(_jsonable(await handler(request)))
            except Exception as exc:
                return fail(exc)

        endpoint.__doc__ = handler.__doc__
        return endpoint

    async def start(request: Request) -> Any:
        """Body: a training config in the shared schema (JSON). 409 while a job runs."""
        config = await body(request)
        if "config" in config and isinstance(config["config"], dict):
            config = config["config"]
        return await run_in_threadpool(host.start_job, config)

    async def status(request: Request) -> Any:
        """State, step/total, loss history, ETA, samples, saved files, loader checks."""
        return host.jobs.status()

    async def stop(request: Request) -> Any:
        """Body ``{"save": false}`` cancels without a final file; default: stop and save.

        With no run in progress: 200, the status unchanged, ``message`` says so (as the tab does).
        """
        data = await body(request)
        idle = host.idle_message()
        if idle:
            return {**host.jobs.status(), "message": idle}
        return host.jobs.stop() if data.get("save", True) else host.jobs.cancel()

    async def convert(request: Request) -> Any:
        """Body: ``{"src", "dst", "to"?, "base"?, "arch"?, "dtype"?, "name"?, "force"?}``."""
        data = await body(request)
        if not data.get("src") or not data.get("dst"):
            raise converters.AdapterError('convert needs "src" and "dst" paths')
        options = {k: data[k] for k in ("dtype", "name") if data.get(k)}
        try:
            out = await run_in_threadpool(
                lambda: converters.convert(data["src"], data["dst"], to=data.get("to"), base=data.get("base"),
                                           arch=data.get("arch"), force=bool(data.get("force")), **options))
        except converters.AdapterError as exc:  # the CLI's wording; here the flags are body keys
            raise converters.AdapterError(for_rest(str(exc))) from None
        return {"written": str(out)}

    async def inspect(request: Request) -> Any:
        """Body ``{"path", "base"?}`` (or the same as query parameters)."""
        data = dict(request.query_params)
        if request.method == "POST":
            data.update(await body(request))
        if not data.get("path"):
            raise converters.AdapterError('inspect needs "path"')
        try:
            return await run_in_threadpool(converters.inspect_adapter, data["path"], data.get("base"))
        except converters.AdapterError as exc:
            raise converters.AdapterError(for_rest(str(exc))) from None

    async def generate(request: Request) -> Any:
        """Body ``{"base", "lora", "prompt", "scale"?, "chat"?, "system"?, "backend"?, "max_tokens"?, "temperature"?,
        "top_k"?, "top_p"?, "seed"?}``: the base's and the adapter's answers (Try); 409 while a job runs."""
        from .text.try_adapter import options_from_body

        options = options_from_body(await body(request))
        return (await run_in_threadpool(lambda: host.try_adapter(**options))).as_dict()

    app.add_api_route(PREFIX + "/start", route(start), methods=["POST"])
    app.add_api_route(PREFIX + "/status", route(status), methods=["GET"])
    app.add_api_route(PREFIX + "/stop", route(stop), methods=["POST"])
    app.add_api_route(PREFIX + "/convert", route(convert), methods=["POST"])
    app.add_api_route(PREFIX + "/inspect", route(inspect), methods=["GET", "POST"])
    app.add_api_route(PREFIX + "/generate", route(generate), methods=["POST"])
    return True


def _jsonable(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, everything else as str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
