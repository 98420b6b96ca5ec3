"""RFC 9457 problem details: machine-readable HTTP errors that say which field is wrong."""

from __future__ import annotations

import json
from collections.abc import Iterable

from aiohttp import web

from intake.normalizer.errors import FieldError

MEDIA_TYPE = "application/problem+json"
# Relative type URIs resolve against the gateway's own URL; README.md documents each.
TYPES = {
    400: "/problems/bad-request",
    401: "/problems/unauthenticated",
    403: "/problems/forbidden",
    404: "/problems/not-found",
    413: "/problems/too-large",
    415: "/problems/unsupported-media-type",
    422: "/problems/invalid-fields",
    429: "/problems/too-many-requests",
    503: "/problems/try-again-later",
}


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    errors: Iterable[FieldError] = (),
    type_: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    body: dict[str, object] = {"type": type_ or TYPES.get(status, "about:blank"), "title": title, "status": status}
    if detail:
        body["detail"] = detail
    listed = [{"field": e.field, "detail": e.detail} for e in errors]
    if listed:
        body["errors"] = listed
    headers = {"Retry-After": str(int(retry_after))} if retry_after else None
    return web.Response(
        status=status, body=json.dumps(body, ensure_ascii=False).encode(), content_type=MEDIA_TYPE, headers=headers
    )
