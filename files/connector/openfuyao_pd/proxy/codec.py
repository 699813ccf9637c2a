"""JSON for the request path: orjson when it is installed, the standard library otherwise.

Every request is parsed once and two bodies are serialised (P's and D's), so the codec is a
visible share of the proxy's CPU time; orjson does it several times faster. orjson is optional:
the proxy behaves the same without it (the tests run both).

Differences that do not matter here: orjson writes compact UTF-8 rather than `\\uXXXX` escapes,
and reads integers beyond 64 bits as floats (no vLLM request field takes one). What it refuses
(NaN/Infinity literals, which the standard library accepts) falls back to the standard library,
so the set of accepted bodies does not change.
"""

from __future__ import annotations

import json
import os
from typing import Any

try:
    if os.environ.get("PD_PROXY_PURE_PYTHON"):
        raise ImportError("PD_PROXY_PURE_PYTHON is set")
    import orjson
except ImportError:
    orjson = None  # type: ignore[assignment]

BACKEND = "orjson" if orjson is not None else "json"


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


if orjson is not None:
    _orjson_dumps = orjson.dumps
    _orjson_loads = orjson.loads
    _NON_STR_KEYS = orjson.OPT_NON_STR_KEYS

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes."""
        try:
            return _orjson_dumps(obj, option=_NON_STR_KEYS)
        except TypeError:  # e.g. an int beyond 64 bits: the standard library writes it exactly
            return _std_dumps(obj)

    def loads(data: bytes | str) -> Any:
        """Parse JSON; raises ValueError when the standard library would too."""
        try:
            return _orjson_loads(data)
        except ValueError:
            return json.loads(data)  # NaN / Infinity literals, or a real error raised the usual way
else:
    dumps = _std_dumps
    loads = json.loads
