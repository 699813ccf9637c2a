"""Fault injection: parse ``--sim-fault`` specs and decide, per request, what breaks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FAULT_HELP = ("fail | delay:MS | die-after:N | no-params | error-mid-stream:K | fail-rate:P | "
              "corrupt-kv | unhealthy | hang | stuck-kv:F")


class FaultError(ValueError):
    """A malformed fault spec."""


@dataclass
class Faults:
    fail: bool = False  # every completion answers HTTP 500
    delay_ms: float = 0.0  # added before the engine starts the request
    die_after: int | None = None  # exit (close) after this many completion requests arrived
    no_params: bool = False  # a prefill returns no kv_transfer_params
    error_mid_stream: int | None = None  # drop the connection after K generated tokens
    fail_rate: float = 0.0  # chance that a request answers 500 (seeded)
    corrupt_kv: bool = False  # a prefill serves KV bytes with flipped bits
    unhealthy: bool = False  # /health answers 503
    hang: bool = False  # completions never answer (until the client gives up)
    # KV blocks leaked: vllm:kv_cache_usage_perc reads at least this (0..1) with no request running
    stuck_kv: float = 0.0
    specs: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"faults": list(self.specs)}


def parse_faults(specs: list[str]) -> Faults:
    faults = Faults(specs=[s for s in specs if s])
    for spec in faults.specs:
        name, _, arg = spec.partition(":")
        try:
            if name == "fail":
                faults.fail = True
            elif name == "delay":
                faults.delay_ms = float(arg)
            elif name == "die-after":
                faults.die_after = int(arg)
            elif name == "no-params":
                faults.no_params = True
            elif name == "error-mid-stream":
                faults.error_mid_stream = int(arg or 0)
            elif name == "fail-rate":
                faults.fail_rate = float(arg)
                if not 0.0 <= faults.fail_rate <= 1.0:
                    raise ValueError("must be between 0 and 1")
            elif name == "corrupt-kv":
                faults.corrupt_kv = True
            elif name == "unhealthy":
                faults.unhealthy = True
            elif name == "hang":
                faults.hang = True
            elif name == "stuck-kv":
                faults.stuck_kv = float(arg)
                if not 0.0 < faults.stuck_kv <= 1.0:
                    raise ValueError("must be above 0 and at most 1")
            else:
                raise FaultError(f"unknown fault {spec!r}; use {FAULT_HELP}")
        except ValueError as exc:
            if isinstance(exc, FaultError):
                raise
            raise FaultError(f"bad fault {spec!r} ({exc}); use {FAULT_HELP}") from exc
    return faults


class FailDice:
    """Seeded coin flips so fail-rate runs are reproducible."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate
