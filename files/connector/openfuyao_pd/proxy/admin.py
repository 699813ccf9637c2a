"""Authentication of the mutating instance API (add, drain, undrain, delete).

Design (docs/proxy.md, "Admin API"): the calls that change routing need
`Authorization: Bearer <token>`, where the token is the content of `admin_token_file`. The file
must not be readable by group or others (0600); it is read again on every mutating call, so a
rotated token takes effect without a restart. With no token file configured, mutations are
refused (403): the proxy never starts with an open admin API by accident. Read-only endpoints
(`/health`, `/metrics`, `GET /v1/instances`, `/v1/models`) stay open. The token never reaches a
log line, a metric or an error message.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable

from aiohttp import web

LOG = logging.getLogger("openfuyao_pd.proxy")
MUTATING_METHODS = frozenset({"POST", "DELETE", "PUT", "PATCH"})
INSTANCE_PREFIX = "/v1/instances"


class TokenFileError(ValueError):
    """The token file is missing, empty or readable by others (one line, no token in it)."""


def read_token(path: str) -> str:
    """The token in `path`; refuses a file that group or others may read or write."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise TokenFileError(f"cannot read admin_token_file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"admin_token_file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise TokenFileError(f"admin_token_file {path} has mode {stat.S_IMODE(info.st_mode):04o}: "
                             f"others may read it; run chmod 600 {path}")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(4097)
    except OSError as exc:
        raise TokenFileError(f"cannot read admin_token_file {path}: {exc.strerror}") from None
    token = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > 4096 or not token or any(c.isspace() for c in token):
        raise TokenFileError(f"admin_token_file {path} must hold one token of 1-4096 characters without spaces")
    if len(token) < 16:
        raise TokenFileError(f"admin_token_file {path} holds a token shorter than 16 characters; use a longer one")
    return token


def is_mutation(request: web.BaseRequest) -> bool:
    path = request.path
    return request.method in MUTATING_METHODS and (path == INSTANCE_PREFIX or path.startswith(INSTANCE_PREFIX + "/"))


def _deny(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "authentication_error" if status == 401 else "permission_error",
                      "code": status}}
    headers = {"WWW-Authenticate": 'Bearer realm="pd-proxy admin"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


def check(request: web.BaseRequest, token_file: str) -> web.Response | None:
    """None when the request may mutate; else the 401/403 answer."""
    if not token_file:
        return _deny(403, "the instance API is read-only: start the proxy with admin_token_file to allow changes")
    given = request.headers.get("Authorization", "")
    scheme, _, credential = given.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return _deny(401, "this call changes routing: send Authorization: Bearer <token from admin_token_file>")
    try:
        expected = read_token(token_file)
    except TokenFileError as exc:
        LOG.error(json.dumps({"event": "admin_token_unreadable", "error": str(exc)}))
        return _deny(403, "the admin token file cannot be used; see the proxy log")
    if not hmac.compare_digest(credential.strip().encode(), expected.encode()):
        LOG.warning(json.dumps({"event": "admin_denied", "method": request.method, "path": request.path,
                                "remote": request.remote}))
        return _deny(403, "wrong admin token")
    return None


def middleware(token_file: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware guarding the mutating instance endpoints."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if is_mutation(request):
            denied = check(request, token_file)
            if denied is not None:
                return denied
        return await handler(request)

    return guard
