"""The tab's live displays (progress, status, loss chart, files) and the quiet route that serves them.

The displays are ``gr.HTML`` boxes whose value is one ``<div data-live=KEY>``; both ways of
refreshing them write the same markup:

- ``GET <page>/lora-bridge/tab/live``: a route of the extension's own on the host's app, which
  javascript/lora_bridge.js fetches once a second while the tab is on screen and writes into those
  divs. It goes through no gradio event, so nothing is queued or logged (gradio 3.41's queue posts
  every event to its own ``/api/predict`` and ``/reset`` with httpx, two log lines per tick at
  DEBUG). It answers what the WebUI's page shows: when the WebUI has a login (``--gradio-auth``)
  only to its login cookie, and to ``--api-auth`` credentials when those are set.
- the hidden poll button (a gradio event) when that route is not there or refuses the page
  (standalone stacks that add no routes, ``--api-auth`` without a login): the page keeps working,
  as before, with the host's logging.

The samples gallery and the result boxes are gradio components: the script clicks the poll button
once when their tick changes (a sample was saved, a run ended), never on every tick.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("lora_bridge.ui")

ROUTE = "/lora-bridge/tab/live"
KEYS = ("image_progress", "image_status", "image_chart", "output", "text_progress", "text_status", "text_chart",
        "text_result")


def wrap(key: str, inner: str) -> str:
    """A display's value: the one div the script fills (gradio re-renders only the outer box)."""
    return f'<div class="lora-bridge-live" data-live="{key}">{inner}</div>'


def inline_code(text: str) -> str:
    """Escaped text with `backticked` parts as <code>."""
    parts = str(text).split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def message_html(message: str) -> str:
    """A run's message: lines as lines, lines indented by 4 spaces (a code snippet) as one <pre> block."""
    out: list[str] = []
    block: list[str] = []
    text: list[str] = []

    def flush_text() -> None:
        if text:
            out.append("<p>" + "<br>".join(html.escape(line) for line in text) + "</p>")
            text.clear()

    def flush_block() -> None:
        if block:
            out.append("<pre><code>" + html.escape("\n".join(block)) + "</code></pre>")
            block.clear()

    for line in str(message or "").splitlines():
        if line.startswith("    "):
            flush_text()
            block.append(line[4:])
        else:
            flush_block()
            if line.strip():
                text.append(line)
    flush_text()
    flush_block()
    return "".join(out)


def list_html(head: str, items: Sequence[str]) -> str:
    """A heading line and a bullet list, items with `code` parts."""
    first = f"<p>{inline_code(head)}</p>" if head else ""
    rest = "<ul>" + "".join(f"<li>{inline_code(item)}</li>" for item in items) + "</ul>" if items else ""
    return first + rest


# ---- the route -------------------------------------------------------------------------------------------


def logged_in(app: Any, cookies: dict[str, str]) -> bool:
    """True when a cookie holds a token of the host's gradio login (``app.tokens``).

    gradio 3.41 names the cookies ``access-token`` / ``access-token-unsecure``, 4.x adds
    ``-{app.cookie_id}``; both keep the tokens of logged-in users in ``app.tokens``.
    """
    tokens = getattr(app, "tokens", None) or {}
    suffix = f"-{app.cookie_id}" if getattr(app, "cookie_id", None) else ""
    names = (f"access-token{suffix}", f"access-token-unsecure{suffix}")
    return any(cookies.get(name) in tokens for name in names if cookies.get(name))


def allowed(app: Any, authorization: str | None, cookies: dict[str, str], api_auth: str | None) -> bool:
    """Whether a request may read the tab's state.

    ``--api-auth`` credentials always may; with a WebUI login (``app.auth``) its login cookie may;
    with neither configured, anyone who can open the page may (as the page itself).
    """
    from ..api import authorized, parse_credentials

    credentials = parse_credentials(api_auth)
    if credentials and authorization and authorized(authorization, credentials):
        return True
    login = getattr(app, "auth", None)
    if login and logged_in(app, cookies):
        return True
    return not credentials and not login


def register(app: Any, payload: Callable[[str | None], dict[str, Any]],
             api_auth: Callable[[], str | None] = lambda: None) -> bool:
    """Add ``GET /lora-bridge/tab/live`` to ``app`` (once per app); ``payload(seen)`` is the tab's state.

    Returns False when it was already there (the WebUI calls ``on_app_started`` again on Reload UI).
    A refusal is a bare 403: a ``WWW-Authenticate`` header would make the browser ask for a password.
    """
    if any(getattr(route, "path", "") == ROUTE for route in getattr(app, "routes", [])):
        return False
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def live(request: Request) -> JSONResponse:
        if not allowed(app, request.headers.get("authorization"), dict(request.cookies), api_auth()):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        try:
            return JSONResponse(payload(request.query_params.get("seen")), headers={"Cache-Control": "no-store"})
        except Exception as exc:  # the page falls back to its gradio poll; never a traceback per second
            log.debug("LoRA Bridge live view failed", exc_info=True)
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    live.__annotations__ = {"request": Request, "return": JSONResponse}  # fastapi reads them; imported lazily here
    app.add_api_route(ROUTE, live, methods=["GET"], include_in_schema=False)
    return True
