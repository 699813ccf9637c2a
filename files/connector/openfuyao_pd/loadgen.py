"""Bounded load generator: N completion requests at a fixed rate, every failure recorded.

Used by the day-2 tests (rolling restart, scale) to prove that no client request fails
while instances are drained, stopped and re-admitted. It always ends by itself: after
`--requests` requests, after `--duration` seconds, or as soon as `--stop-file` exists —
whichever comes first — then waits for the requests in flight (each bounded by `--timeout`).

    python -m openfuyao_pd.loadgen --url http://127.0.0.1:9090 --requests 200 --rate 10 \\
        --model tiny-llama --report /tmp/load.json

A request counts as failed on a transport error, a timeout, an HTTP status other than 200,
a body without `choices`, or (with `--stream`) a stream that ends without `data: [DONE]`.
`--connect-retries N` retries a request whose connection could not be opened (nothing was
sent, so nothing can have been processed) up to N times, 0.5 s, 1 s, 2 s ... apart, as the
OpenAI client does by default; the report counts those retries (`connect_retries`).
Exit codes: 0 no failure, 1 at least one failed request, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


@dataclass
class Outcome:
    """One request's fate."""

    index: int
    ok: bool
    status: int | None
    latency_s: float
    error: str | None = None
    started_at: float = 0.0
    connect_retries: int = 0


@dataclass
class Report:
    """Everything a test needs to decide whether the run was clean."""

    url: str
    planned: int
    outcomes: list[Outcome] = field(default_factory=list)
    stopped_by: str = "requests"
    wall_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok)

    def as_dict(self) -> dict[str, Any]:
        errors = Counter(o.error for o in self.outcomes if o.error)
        return {
            "url": self.url,
            "planned": self.planned,
            "sent": self.sent,
            "ok": self.sent - self.failed,
            "failed": self.failed,
            "stopped_by": self.stopped_by,
            "wall_s": round(self.wall_s, 3),
            "statuses": dict(Counter(str(o.status) for o in self.outcomes)),
            "connect_retries": sum(o.connect_retries for o in self.outcomes),
            "errors": dict(errors.most_common(20)),
            "failures": [
                {"index": o.index, "status": o.status, "error": o.error, "at_s": round(o.started_at, 3)}
                for o in self.outcomes if not o.ok
            ][:50],
        }


def build_payload(model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": stream, "ignore_eos": True}


def check_body(body: Any) -> str | None:
    """Why a non-streamed 200 body is not a completion (None when it is one)."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return "body has no choices"
    return None


def check_stream(lines: Sequence[bytes]) -> str | None:
    """Why an SSE stream is incomplete (None when it carried data and ended with [DONE])."""
    events = [ln.strip()[len(b"data:"):].strip() for ln in lines if ln.strip().startswith(b"data:")]
    if not events:
        return "stream carried no data events"
    if events[-1] != b"[DONE]":
        return "stream ended without [DONE]"
    for ev in events[:-1]:
        try:
            doc = json.loads(ev)
        except ValueError:
            return "stream event is not JSON"
        if isinstance(doc, dict) and "error" in doc:
            return f"stream error event: {str(doc['error'])[:120]}"
    return None


async def one_request(session: aiohttp.ClientSession, url: str, payload: dict[str, Any],
                      index: int, timeout_s: float, t0: float, connect_retries: int = 0) -> Outcome:
    started = time.monotonic()
    retries = 0
    while True:
        outcome = await _attempt(session, url, payload, index, timeout_s, started, t0)
        refused = outcome.status is None and (outcome.error or "").startswith("ClientConnectorError")
        if not refused or retries >= connect_retries or time.monotonic() - started + 0.5 * 2**retries >= timeout_s:
            outcome.connect_retries = retries
            return outcome
        await asyncio.sleep(0.5 * 2**retries)
        retries += 1


async def _attempt(session: aiohttp.ClientSession, url: str, payload: dict[str, Any],
                   index: int, timeout_s: float, started: float, t0: float) -> Outcome:
    status: int | None = None
    try:
        async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            status = resp.status
            if payload["stream"]:
                lines = [line async for line in resp.content]
                error = f"HTTP {status}" if status != 200 else check_stream(lines)
            else:
                raw = await resp.read()
                if status != 200:
                    error = f"HTTP {status}"
                else:
                    try:
                        error = check_body(json.loads(raw))
                    except ValueError:
                        error = "body is not JSON"
    except TimeoutError:
        error = f"timeout after {timeout_s:g}s"
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
    return Outcome(index=index, ok=error is None, status=status, latency_s=time.monotonic() - started,
                   error=error, started_at=started - t0)


async def run(url: str, model: str, requests: int, rate: float, duration_s: float, timeout_s: float,
              max_tokens: int = 8, prompt: str = "The quick brown fox", stream: bool = False,
              stop_file: Path | None = None, connect_retries: int = 0) -> Report:
    """Send up to `requests` requests, one every 1/rate s; stop early on duration or stop file."""
    endpoint = url.rstrip("/") + "/v1/completions"
    report = Report(url=endpoint, planned=requests)
    t0 = time.monotonic()
    interval = 1.0 / rate
    tasks: list[asyncio.Task[Outcome]] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(requests):
            # Pace against the schedule, not the previous send, so the rate holds on average.
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - t0 >= duration_s:
                report.stopped_by = "duration"
                break
            if stop_file is not None and stop_file.exists():
                report.stopped_by = "stop-file"
                break
            payload = build_payload(model, f"{prompt} #{i}", max_tokens, stream)
            tasks.append(asyncio.create_task(one_request(session, endpoint, payload, i, timeout_s, t0, connect_retries)))
        report.outcomes = list(await asyncio.gather(*tasks))
    report.wall_s = time.monotonic() - t0
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="proxy base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--model", default="tiny-llama", help="served model name sent in each request")
    parser.add_argument("--requests", type=int, default=100, help="at most this many requests")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=300.0, help="stop sending after this many seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--prompt", default="The quick brown fox")
    parser.add_argument("--stream", action="store_true", help="use SSE streaming responses")
    parser.add_argument("--stop-file", type=Path, help="stop sending once this file exists")
    parser.add_argument("--report", type=Path, help="write the JSON report here (also printed)")
    parser.add_argument("--connect-retries", type=int, default=0,
                        help="retry a request whose connection could not be opened up to N times")
    args = parser.parse_args(argv)
    if args.connect_retries < 0:
        parser.error("--connect-retries must be at least 0")
    for name in ("requests", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("rate", "duration", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url {args.url!r} must start with http:// or https://")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args.url, args.model, args.requests, args.rate, args.duration, args.timeout,
                             args.max_tokens, args.prompt, args.stream, args.stop_file, args.connect_retries))
    doc = json.dumps(report.as_dict(), indent=2)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(doc + "\n", encoding="utf-8")
    print(doc)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
