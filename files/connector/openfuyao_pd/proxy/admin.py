"""The instance API (list, add, drain, undrain, delete) and the authentication of its mutating calls.

Design (docs/proxy.md, "Admin API"): the calls that change routing need
`Authorization: Bearer <token>`, where the token is the content of `admin_token_file`. The file
must not be readable by group or others (0600); it is read again on every mutating call, so a
rotated token takes effect without a restart. With no token file configured, mutations are
refused (403): the proxy never starts with an open admin API by accident. Read-only endpoints
(`/health`, `/metrics`, `GET /v1/instances`, `/v1/models`) stay open. The token never reaches a
log line, a metric or an error message.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from openfuyao_pd.proxy.config import ROLES, ConfigError, parse_backend
from openfuyao_pd.proxy.routing import Backend

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


class InstanceApi:
    """Proxy part (server.Proxy): the /v1/instances handlers (middleware() guards the mutating ones)."""

    opts: dict[str, Any]
    shared: Any
    _seen_version: int
    backends: dict[str, Backend]
    sync_instances: Any  # workers.WorkerSync's
    refresh_all: Any  # server.Proxy's
    _add_backend: Any  # server.Proxy's
    _share: Any  # workers.WorkerSync's
    probe: Any  # health.HealthChecks'

    async def handle_list_instances(self, _request: web.Request) -> web.Response:
        if self.shared is not None:
            if self.shared.version != self._seen_version:
                self.sync_instances()
            self.refresh_all()
        return web.json_response({"instances": [b.describe() for b in self.backends.values()]})

    async def handle_add_instance(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON {name, role, address, port}"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"error": "body must be a JSON object {name, role, address, port}"}, status=400)
        role = data.get("role")
        if role not in ROLES:
            return web.json_response({"error": f"role must be one of {', '.join(ROLES)}"}, status=400)
        try:
            spec = parse_backend(data, role, len(self.backends), "instance")
        except ConfigError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if spec.name in self.backends:
            return web.json_response({"error": f"instance {spec.name} already exists"}, status=409)
        backend = self._add_backend(spec)
        if not await self.probe(backend):
            # Not serving yet (still loading the model?): keep it out until a probe succeeds.
            backend.ejected = True
        await self._share("add", spec.name, {**data, "role": role, "name": spec.name})
        LOG.warning(json.dumps({"event": "instance_added", "backend": backend.name, "role": role}))
        return web.json_response(backend.describe(), status=201)

    def _lookup(self, request: web.Request) -> Backend | None:
        return self.backends.get(request.match_info["name"])

    def _timeout_param(self, request: web.Request) -> float:
        try:
            return max(0.0, float(request.query.get("timeout", self.opts["drain_timeout"])))
        except ValueError:
            return self.opts["drain_timeout"]

    async def _drain(self, backend: Backend, timeout: float) -> bool:
        backend.draining = True
        await self._share("drain", backend.name)
        deadline = time.monotonic() + timeout
        backend.refresh()
        while backend.inflight_requests > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            backend.refresh()
        return backend.inflight_requests == 0

    async def handle_drain(self, request: web.Request) -> web.Response:
        backend = self._lookup(request)
        if backend is None:
            return web.json_response({"error": f"no instance {request.match_info['name']}"}, status=404)
        drained = await self._drain(backend, self._timeout_param(request))
        return web.json_response({**backend.describe(), "drained": drained})

    async def handle_undrain(self, request: web.Request) -> web.Response:
        backend = self._lookup(request)
        if backend is None:
            return web.json_response({"error": f"no instance {request.match_info['name']}"}, status=404)
        backend.draining = False
        await self._share("undrain", backend.name)
        return web.json_response(backend.describe())

    async def handle_delete(self, request: web.Request) -> web.Response:
        backend = self._lookup(request)
        if backend is None:
            return web.json_response({"error": f"no instance {request.match_info['name']}"}, status=404)
        drained = await self._drain(backend, self._timeout_param(request))
        backend.removed = True
        self.backends.pop(backend.name, None)
        await self._share("delete", backend.name)
        LOG.warning(json.dumps({"event": "instance_removed", "backend": backend.name, "drained": drained}))
        return web.json_response({**backend.describe(), "removed": True, "drained": drained})
