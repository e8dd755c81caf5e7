"""``/docs``: the REST API described from its OpenAPI schema, as one page with no scripts.

FastAPI's own page loads Swagger UI from a CDN, and is blank on a server without internet
access; this one is plain HTML built from ``app.openapi()`` (the schema stays at
``/openapi.json`` for tools).
"""

from __future__ import annotations

from html import escape
from typing import Any

_METHODS = ("get", "post", "put", "patch", "delete")
_STYLE = (
    "body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "code{background:#f3f3f3;padding:0 .3em}h2{font-size:1.1rem;margin-top:1.6rem}"
    ".m{font-weight:bold;text-transform:uppercase;margin-right:.5em}"
)
_AUTH = (
    "Every <code>/api/</code> route needs <code>Authorization: Bearer TOKEN</code>: a token of "
    "scope <code>read</code> to look, <code>operate</code> to cancel or re-run runs, "
    "<code>admin</code> for tokens and the configuration (<code>vmrunner tokens create NAME "
    "--scope SCOPE</code>). <code>/webhook</code> checks GitHub's signature instead."
)


def docs_page(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(str(info.get('title', 'API')))}</title><style>{_STYLE}</style>",
        "</head><body>",
        f"<h1>{escape(str(info.get('title', '')))} {escape(str(info.get('version', '')))}</h1>",
        f"<p>{escape(str(info.get('summary', '')))}</p><p>{_AUTH}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, operations in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            parts.append(
                f"<h2><span class='m'>{method}</span><code>{escape(path)}</code></h2>"
                f"<p>{escape(str(operation.get('description') or operation.get('summary', '')))}"
                "</p>"
            )
    parts.append("</body></html>")
    return "".join(parts)
