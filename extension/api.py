"""REST API under ``/lora-bridge/v1``: start, status, stop, convert, inspect, generate.

Plain ``Request``/``JSONResponse`` handlers (no pydantic models), so one module serves fastapi 0.94
with pydantic 1 (A1111), 0.104 with pydantic 2 (Forge) and current releases. The WebUI's
``--api-auth`` guards only its own routes; these check it themselves (HTTP basic).

What any web page could send is refused before a handler runs: a request whose ``Origin`` is not
the server's own (403; a browser sends it on every cross-site POST), a request to a WebUI that only
listens on this computer whose ``Host`` is not a loopback name (403: a DNS-rebinding page sends its own
name as ``Host`` and as ``Origin``, so the origin check alone lets it through), a POST body that is not
``application/json`` (415: the only types a page may send without a CORS preflight are forms and
text/plain), bodies over ``MAX_BODY`` bytes (413, never read into memory). Paths in bodies go
through the host's ``PathPolicy`` (extension/path_policy.py).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ._converters import converters
from .jobs import JobBusyError
from .path_policy import check_convert_paths, clean_path
from .ui.wording import for_rest

log = logging.getLogger("lora_bridge.api")

PREFIX = "/lora-bridge/v1"
MAX_BODY = 1024 * 1024  # a training config or a convert request is a few kB


class RefusedRequestError(Exception):
    """A request refused before its handler: HTTP ``status`` and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_credentials(api_auth: str | None) -> dict[str, str]:
    """``"user:pass,user2:pass2"`` (the WebUI's --api-auth format) -> {user: password}."""
    out: dict[str, str] = {}
    for item in (api_auth or "").split(","):
        item = item.strip()
        if ":" in item:
            user, password = item.split(":", 1)
            out[user] = password
    return out


def auth_problem(api_auth: str | None) -> str | None:
    """Why a non-empty ``--api-auth`` value gives no credentials (the routes then stay closed), else None."""
    if not (api_auth or "").strip() or parse_credentials(api_auth):
        return None
    return "--api-auth holds no user:password pair (e.g. --api-auth admin:secret); the LoRA Bridge API stays closed"


def _origin_key(url: str, scheme: str = "") -> str | None:
    """``host:port`` of an origin (default ports made explicit, lower case); None when unparsable."""
    try:
        parts = urlsplit(url if "//" in url else f"{scheme}://{url}")
        port = parts.port or {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme or scheme)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return f"{parts.hostname.lower()}:{port}"


def same_origin(origin: str, host_header: str | None, scheme: str, allowed: Sequence[str] = ()) -> bool:
    """True when ``origin`` is the server's own (the ``Host`` it was reached by) or one the user allowed.

    The scheme is not compared: behind a TLS proxy the server sees http while the page is https.
    ``allowed``: the WebUI's ``--cors-allow-origins`` entries; an entry ``re:PATTERN`` is its
    ``--cors-allow-origins-regex``.
    """
    for entry in allowed:
        if entry.startswith("re:"):
            if re.fullmatch(entry[3:], origin):
                return True
        elif entry.strip().rstrip("/") == origin.rstrip("/"):
            return True
    own = _origin_key(host_header or "", scheme)
    return own is not None and _origin_key(origin) == own


def loopback_host(host_header: str | None) -> bool:
    """True when a ``Host`` header names this computer: ``localhost`` (or a ``*.localhost`` name, which
    resolves only to loopback), a 127.0.0.0/8 address or ``[::1]``, with any port."""
    parts = urlsplit(f"//{host_header or ''}")
    try:
        name = (parts.hostname or "").rstrip(".")
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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


def register(app: Any, host: Any, api_auth: Callable[[], str | None] = lambda: None,
             origins: Callable[[], Sequence[str]] = lambda: (), local_only: Callable[[], bool] = lambda: False) -> bool:
    """Add the routes to a FastAPI ``app`` (once per app); ``api_auth()`` returns the WebUI's --api-auth,
    ``origins()`` the further origins the user allowed (see ``same_origin``), ``local_only()`` whether the
    WebUI listens only on this computer (then a request must name it as ``Host``: see ``loopback_host``).

    Returns False when the routes were already there (Reload UI calls ``on_app_started`` again).
    """
    if any(getattr(route, "path", "") == PREFIX + "/status" for route in getattr(app, "routes", [])):
        return False
    logged: set[str] = set()

    def guard(request: Request) -> JSONResponse | None:
        if local_only() and not loopback_host(request.headers.get("host")):
            log.warning("LoRA Bridge API: refused a request for host %.200s (the WebUI listens only on this computer)",
                        request.headers.get("host"))
            refusal = "request refused: Host is not this computer (the WebUI runs without --listen)"
            return JSONResponse({"error": refusal}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request.headers.get("host"), request.url.scheme,
                                                  tuple(origins())):
            log.warning("LoRA Bridge API: refused a request from origin %.200s", origin)
            return JSONResponse({"error": "cross-origin request refused: Origin is not this WebUI"}, status_code=403)
        configured = api_auth()
        problem = auth_problem(configured)
        if problem:
            if problem not in logged:
                logged.add(problem)
                log.error("LoRA Bridge API: %s", problem)
            return JSONResponse({"error": problem}, status_code=403)
        if authorized(request.headers.get("authorization"), parse_credentials(configured)):
            return None
        return JSONResponse({"error": "unauthorized"}, status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="lora-bridge"'})

    def fail(exc: Exception) -> JSONResponse:
        if isinstance(exc, RefusedRequestError):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        if isinstance(exc, JobBusyError):
            log.warning("LoRA Bridge API: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=409)
        if isinstance(exc, converters.AdapterError):  # the caller's input: one line, no traceback
            log.warning("LoRA Bridge API: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        log.exception("LoRA Bridge API error")
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    async def body(request: Request) -> dict[str, Any]:
        raw = await read_body(request)
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise converters.AdapterError(f"request body is not valid JSON ({reason}); send a JSON object") from None
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
                check_body_headers(request)
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
        save = (await body(request)).get("save", True)
        if not isinstance(save, bool):
            raise converters.AdapterError('"save" must be true or false')
        idle = host.idle_message()
        if idle:
            return {**host.jobs.status(), "message": idle}
        return host.jobs.stop() if save else host.jobs.cancel()

    async def convert(request: Request) -> Any:
        """Body: ``{"src", "dst", "to"?, "base"?, "arch"?, "dtype"?, "name"?, "force"?}``."""
        data = await body(request)
        if not data.get("src") or not data.get("dst"):
            raise converters.AdapterError('convert needs "src" and "dst" paths')
        paths = check_convert_paths(host.path_policy(), data["src"], data["dst"], data.get("base"))
        options = {k: _word(data, k) for k in ("dtype", "name") if data.get(k)}
        to, arch, force = _word(data, "to"), _word(data, "arch"), data.get("force", False)
        if not isinstance(force, bool):
            raise converters.AdapterError('"force" must be true or false')
        try:
            out = await run_in_threadpool(
                lambda: converters.convert(paths["src"], paths["dst"], to=to, base=paths.get("base"),
                                           arch=arch, force=force, **options))
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
        policy = host.path_policy()
        path, base = clean_path(data["path"], "adapter"), None
        policy.readable(path, "adapter")
        if data.get("base"):
            base = clean_path(data["base"], "base model")
            policy.readable(base, "base model")
        try:
            return await run_in_threadpool(converters.inspect_adapter, path, base)
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


def check_body_headers(request: Request) -> None:
    """415 for a POST whose body is not declared JSON; 413 when ``Content-Length`` exceeds ``MAX_BODY``.

    A POST without a body and without ``Content-Type`` (``curl -X POST .../stop``) passes: there
    is nothing to interpret, and a browser sends ``Origin`` with it (checked by the guard).
    """
    if request.method != "POST":
        return
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise RefusedRequestError(400, "Content-Length is not a number")
        if int(length) > MAX_BODY:
            raise RefusedRequestError(413, f"request body over {MAX_BODY} bytes; send a smaller JSON object")
    kind = request.headers.get("content-type")
    media = (kind or "").split(";", 1)[0].strip().lower()
    if kind is None and (length or "0").strip() == "0" and "transfer-encoding" not in request.headers:
        return
    if media != "application/json":
        raise RefusedRequestError(415, f"send the body as application/json, not {media or 'without a Content-Type'}")


async def read_body(request: Request) -> bytes:
    """The request body, read in chunks and refused (413) as soon as it passes ``MAX_BODY`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RefusedRequestError(413, f"request body over {MAX_BODY} bytes; send a smaller JSON object")
        chunks.append(chunk)
    return b"".join(chunks)


def _word(data: dict[str, Any], key: str) -> str | None:
    """An optional string option of a body (``to``, ``arch``, ``dtype``, ``name``); 400 for anything else."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > 255:
        raise converters.AdapterError(f'"{key}" must be a short string')
    return value


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
