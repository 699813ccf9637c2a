"""Errors of the request flow: a backend that may be retried elsewhere, a 4xx passed to the client."""

from __future__ import annotations

import json

from openfuyao_pd.proxy.routing import Backend


class BackendFailure(Exception):
    """A backend failed before anything reached the client: the request may be retried elsewhere."""

    def __init__(self, backend: Backend, stage: str, reason: str, status: int | None = None,
                 body: bytes = b"", content_type: str = "application/json") -> None:
        super().__init__(f"{stage} {backend.name}: {reason}")
        self.backend = backend
        self.stage = stage
        self.reason = reason
        self.status = status
        self.body = body
        self.content_type = content_type


class UpstreamClientError(Exception):
    """A backend answered 4xx: passed to the client as-is, never retried."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream HTTP {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


def error_body(status: int, message: str, kind: str = "proxy_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
