"""The proxy's tunable options as one pure-data table, and the function that validates them.

This module is stdlib-only and has no side effects, so the planner (plugins/module_utils) can
read the same table the proxy enforces: names, types, bounds, defaults and descriptions.
`validate(raw)` returns the complete option dict (defaults filled in) or raises OptionError
with one line that names the option and the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

ROUTING = ("least_load", "prefix_affinity", "round_robin")


@dataclass(frozen=True)
class Option:
    """One option. kind: int | float | bool | choice | buckets. Bounds are inclusive; None = unbounded."""

    name: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    description: str = ""


# Durations are seconds. Lower bounds on intervals keep a typo (1e-6) from burning a core;
# upper bounds keep a typo (3600000) from disabling a protection by accident.
OPTIONS: tuple[Option, ...] = (
    Option("routing", "choice", "least_load", choices=ROUTING,
           description="Backend choice for P and D: least in-flight tokens, longest cached prefix, or rotation."),
    Option("local_prefill_max_tokens", "int", 0, 0, 10_000_000,
           description="Prefill on the decode when the predicted uncached prompt is at most this many tokens (0 = off)."),
    Option("prefill_queue_threshold", "int", 0, 0, 1_000_000,
           description="Prefill on the decode when the least busy prefill has this many prefills in flight (0 = off)."),
    Option("decode_busy_threshold", "int", 0, 0, 1_000_000,
           description="Stay disaggregated when the chosen decode has this many requests in flight (0 = no guard)."),
    Option("batch_priority", "bool", False,
           description="Set vLLM `priority` on prefill requests by prompt-length bucket (P needs --scheduling-policy priority)."),
    Option("priority_buckets", "buckets", ((512, 0), (2048, 1), (8192, 2)),
           description="[max_tokens, priority] pairs in increasing max_tokens; longer prompts get the last priority + 1."),
    Option("chars_per_token", "float", 4.0, 0.1, 1000.0,
           description="Token estimate for text prompts (token-id prompts are counted exactly)."),
    Option("block_tokens", "int", 64, 1, 1_000_000,
           description="Block size, in estimated tokens, of the prefix-affinity index."),
    Option("prefix_cache_blocks", "int", 100_000, 0, 100_000_000,
           description="Blocks the proxy remembers per backend for prefix affinity (LRU)."),
    Option("affinity_max_imbalance_tokens", "int", 8192, 0, 1_000_000_000,
           description="Prefix affinity gives way to the least-loaded backend beyond this in-flight token gap."),
    Option("default_max_tokens", "int", 128, 0, 10_000_000,
           description="Decode load estimate for requests that set no max_tokens."),
    Option("connect_timeout", "float", 5.0, 0.05, 600.0,
           description="TCP connect timeout of every upstream call, seconds."),
    Option("prefill_timeout", "float", 600.0, 0.1, 86_400.0,
           description="Read timeout for the prefill's answer, seconds."),
    Option("decode_timeout", "float", 600.0, 0.1, 86_400.0,
           description="Read timeout for the decode's first chunk and between two chunks, seconds."),
    Option("max_retries", "int", 2, 0, 100,
           description="Fresh P/D pairs tried before the first byte reaches the client."),
    Option("fallback_local_prefill", "bool", True,
           description="A failed prefill falls back to prefill on the decode."),
    Option("health_interval", "float", 5.0, 0.1, 3600.0,
           description="Seconds between two active GET /health probes of every backend."),
    Option("health_timeout", "float", 2.0, 0.05, 600.0,
           description="Timeout of one health probe, seconds."),
    Option("health_failures", "int", 2, 1, 1000,
           description="Consecutive failures before a backend is ejected."),
    Option("health_successes", "int", 1, 1, 1000,
           description="Consecutive successes before an ejected backend is re-admitted."),
    Option("drain_timeout", "float", 30.0, 0.0, 86_400.0,
           description="Default wait of drain and delete on the instance API, and the longest a stopping or "
                       "reloaded worker lets its requests in progress (streams too) run on, seconds."),
    Option("workers", "int", 1, 1, 64,
           description="Worker processes serving the port (one shared socket, connections balanced over them), "
                       "each on its own CPU; routing counts, "
                       "instance API changes and /metrics are shared by all of them."),
    Option("bootstrap_port", "int", 8998, 1, 65535,
           description="Upstream MooncakeConnector bootstrap port when a prefill entry gives none."),
    # Client-side limits (slow and hostile clients).
    Option("header_timeout", "float", 10.0, 0.1, 300.0,
           description="Seconds a client has, from connecting (or from its first byte on a kept-alive "
                       "connection), to send complete request headers; then the connection is closed."),
    Option("body_timeout", "float", 30.0, 0.1, 600.0,
           description="Seconds a client has to send the whole request body once its headers arrived (408 beyond)."),
    Option("keepalive_timeout", "float", 15.0, 0.1, 3600.0,
           description="Seconds an idle kept-alive client connection stays open."),
    Option("max_body_bytes", "int", 16 * 1024 * 1024, 1024, 1024 * 1024 * 1024,
           description="Largest accepted request body, bytes (413 beyond)."),
    Option("max_connections", "int", 4096, 1, 1_000_000,
           description="Concurrent client connections; one more is answered 503 and closed. Keep it under the "
                       "open-files limit (LimitNOFILE) minus the upstream connections."),
    Option("max_json_depth", "int", 64, 2, 10_000,
           description="Deepest nesting of arrays/objects accepted in a request body (400 beyond)."),
    # Releasing the KV a finished prefill holds when the client is gone before the decode took it.
    Option("kv_release", "bool", True,
           description="When a client leaves after prefill, make a decode take the prefill's KV with a 1-token "
                       "request whose answer is discarded, so the prefill frees it now, not at its abort timeout."),
    Option("kv_release_timeout", "float", 10.0, 0.1, 600.0,
           description="Upper bound of one release request, seconds."),
    Option("kv_release_concurrency", "int", 64, 1, 100_000,
           description="Release requests in flight at most; more wait their turn (up to max(1000, 16 x this), "
                       "beyond which the KV is left to the engine's timeout, counted as reason=skipped)."),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS}


class OptionError(ValueError):
    """An option problem, reported as one line."""


def did_you_mean(word: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    """'; did you mean X?' for the closest known name, or a list of the known names."""
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    return f"; known: {', '.join(sorted(known))}"


def _bounds(opt: Option) -> str:
    if opt.low is not None and opt.high is not None:
        return f"between {opt.low:g} and {opt.high:g}"
    return f">= {opt.low:g}" if opt.low is not None else f"<= {opt.high:g}"


def _in_bounds(opt: Option, number: float) -> bool:
    return (opt.low is None or number >= opt.low) and (opt.high is None or number <= opt.high)


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise OptionError(f"{where} must be an integer, got {value!r:.60}")
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"{where} must be an integer, got {value!r:.60}") from None


def _buckets(value: Any, where: str) -> list[tuple[int, int]]:
    if not isinstance(value, list | tuple) or not value:
        raise OptionError(f"{where} must be a non-empty list of [max_tokens, priority] pairs")
    out: list[tuple[int, int]] = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            pair = (item.get("max_tokens"), item.get("priority"))
        elif isinstance(item, list | tuple) and len(item) == 2:
            pair = (item[0], item[1])
        else:
            raise OptionError(f"{where}[{i}] must be [max_tokens, priority] or {{max_tokens, priority}}")
        size, prio = _as_int(pair[0], f"{where}[{i}].max_tokens"), _as_int(pair[1], f"{where}[{i}].priority")
        if size < 1 or abs(prio) > 2**31:
            raise OptionError(f"{where}[{i}] needs max_tokens >= 1 and a priority within +-2^31, got {list(pair)!r:.60}")
        out.append((size, prio))
    if [b[0] for b in out] != sorted({b[0] for b in out}):
        raise OptionError(f"{where} max_tokens must be strictly increasing")
    return out


def check(opt: Option, value: Any, where: str = "") -> Any:
    """The normalized value of one option, or OptionError."""
    where = where or f"options.{opt.name}"
    if opt.kind == "choice":
        if not isinstance(value, str) or value not in opt.choices:
            raise OptionError(f"{where} must be one of {', '.join(opt.choices)}, got {value!r:.60}")
        return value
    if opt.kind == "bool":
        if not isinstance(value, bool):
            raise OptionError(f"{where} must be true or false, got {value!r:.60}")
        return value
    if opt.kind == "buckets":
        return _buckets(value, where)
    if opt.kind == "int":
        number: float = _as_int(value, where)
    else:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN != NaN
            raise OptionError(f"{where} must be a number, got {value!r:.60}")
        number = float(value)
    if not _in_bounds(opt, number):
        raise OptionError(f"{where} must be {_bounds(opt)}, got {value!r:.60}")
    return number


def validate(raw: Any) -> dict[str, Any]:
    """The complete, normalized option dict for a plan's `proxy.options` mapping (None = all defaults)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionError(f"options must be a mapping of option names to values, got {type(raw).__name__}")
    for key in raw:
        if key not in BY_NAME:
            raise OptionError(f"unknown proxy option {key!r:.60}{did_you_mean(key, tuple(BY_NAME))}")
    out = dict(DEFAULTS)
    for key, value in raw.items():
        if value is not None:
            out[key] = value
    return {opt.name: check(opt, out[opt.name]) for opt in OPTIONS}
