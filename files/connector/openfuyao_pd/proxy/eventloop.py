"""The event loop the proxy runs on: uvloop when it is installed, asyncio's own otherwise.

uvloop (libuv) makes each socket operation and loop iteration cheaper, and a proxy does little
else. It is optional: without it, or with PD_PROXY_PURE_PYTHON set, the proxy runs on asyncio's
default loop and behaves the same.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any


def _uvloop() -> Any:
    if os.environ.get("PD_PROXY_PURE_PYTHON"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def name() -> str:
    return "uvloop" if _uvloop() is not None else "asyncio"


def run(main: Coroutine[Any, Any, Any]) -> Any:
    uvloop = _uvloop()
    if uvloop is not None:
        return uvloop.run(main)
    return asyncio.run(main)
