"""KV-leak watchdog: flag an engine whose KV cache stays full while it serves nothing.

vllm-ascend users report prefill instances whose KV usage stays high while idle after decode
errors (blocks never freed). Such an instance looks healthy (/health answers) but admits fewer
requests. The watchdog reads each engine's /metrics every ``interval_s``:
``vllm:kv_cache_usage_perc`` and ``vllm:num_requests_running`` / ``_waiting``. An instance
whose usage is at least ``threshold`` with no request running or waiting, continuously for
``window_s``, is *stuck*. With ``action: recycle`` it is drained through the proxy's instance
API, restarted through its supervisor and undrained; with ``action: flag`` (the default) it
is only reported. Each round writes a JSON state file (read by playbooks/status.yml) and a
Prometheus text file (node_exporter's textfile collector format).

  pd-watchdog --config /etc/openfuyao-pd/watchdog.json [--once]

Standard library only: it runs with the host's python3 beside any engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger("pd-watchdog")
ACTIONS = ("flag", "recycle")


class ConfigError(ValueError):
    """A bad watchdog configuration (one line naming the field and the fix)."""


@dataclass(frozen=True)
class Target:
    name: str
    metrics_url: str
    service: str = ""


@dataclass(frozen=True)
class Config:
    targets: tuple[Target, ...]
    threshold: float = 0.5
    window_s: float = 300.0
    interval_s: float = 15.0
    action: str = "flag"
    proxy_url: str = ""
    restart_argv: tuple[str, ...] = ()
    state_file: str = ""
    prom_file: str = ""
    drain_timeout_s: float = 60.0
    # Every proxy in front of the instances (several [proxy] hosts): a recycled instance is
    # drained on each, so none routes to it while it restarts. proxy_url is the first one.
    proxy_urls: tuple[str, ...] = ()
    # The proxies' admin token (mode 0600), read at each call: the proxy role writes it after
    # the watchdog started. PD_PROXY_ADMIN_TOKEN in the environment is the fallback.
    admin_token_file: str = ""

    @property
    def proxies(self) -> tuple[str, ...]:
        return self.proxy_urls or ((self.proxy_url,) if self.proxy_url else ())


@dataclass(frozen=True)
class Sample:
    kv_usage: float
    running: float
    waiting: float


@dataclass
class Track:
    """What the watchdog knows of one instance across rounds."""

    name: str
    idle_full_since: float | None = None
    stuck: bool = False
    kv_usage: float | None = None
    running: float | None = None
    waiting: float | None = None
    error: str | None = None
    recycles: int = 0
    flagged_total: int = 0
    last_action: str | None = None


def parse_config(doc: Any) -> Config:
    if not isinstance(doc, dict):
        raise ConfigError("watchdog config: expected a JSON object with 'instances'")
    raw = doc.get("instances")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("watchdog config: 'instances' must be a non-empty list of {name, metrics_url}")
    targets = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item.get("name") or not item.get("metrics_url"):
            raise ConfigError(f"watchdog config: instances[{i}] needs 'name' and 'metrics_url'")
        targets.append(Target(str(item["name"]), str(item["metrics_url"]), str(item.get("service") or "")))
    try:
        cfg = Config(tuple(targets), float(doc.get("threshold", 0.5)), float(doc.get("window_s", 300)),
                     float(doc.get("interval_s", 15)), str(doc.get("action", "flag")),
                     str(doc.get("proxy_url") or "").rstrip("/"), tuple(str(a) for a in doc.get("restart_argv") or ()),
                     str(doc.get("state_file") or ""), str(doc.get("prom_file") or ""),
                     float(doc.get("drain_timeout_s", 60)),
                     tuple(str(u).rstrip("/") for u in doc.get("proxy_urls") or () if u),
                     str(doc.get("admin_token_file") or ""))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"watchdog config: a number field is not a number ({exc})") from exc
    if not 0.0 < cfg.threshold <= 1.0:
        raise ConfigError(f"watchdog config: threshold {cfg.threshold} must be above 0 and at most 1")
    if cfg.window_s < 0 or cfg.interval_s <= 0:
        raise ConfigError("watchdog config: window_s must be >= 0 and interval_s > 0")
    if cfg.action not in ACTIONS:
        raise ConfigError(f"watchdog config: action {cfg.action!r} is not one of {', '.join(ACTIONS)}")
    if cfg.action == "recycle" and (not cfg.proxies or not cfg.restart_argv):
        raise ConfigError("watchdog config: action recycle needs proxy_url and restart_argv")
    return cfg


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> Sample:
    """Sum each gauge over its label sets (one series per engine of a data-parallel server)."""
    sums: dict[str, float] = {}
    usage: list[float] = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, value = m.group(1), float(m.group(2))
        if name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            usage.append(value)
        else:
            sums[name] = sums.get(name, 0.0) + value
    if not usage or "vllm:num_requests_running" not in sums:
        raise ValueError("no vllm:kv_cache_usage_perc / vllm:num_requests_running in /metrics")
    return Sample(max(usage), sums["vllm:num_requests_running"], sums.get("vllm:num_requests_waiting", 0.0))


def observe(track: Track, sample: Sample, now: float, cfg: Config) -> bool:
    """Update one instance's track; True when it has just become stuck (act on it once)."""
    track.kv_usage, track.running, track.waiting, track.error = sample.kv_usage, sample.running, sample.waiting, None
    idle_full = sample.kv_usage >= cfg.threshold and sample.running == 0 and sample.waiting == 0
    if not idle_full:
        track.idle_full_since, track.stuck = None, False
        return False
    if track.idle_full_since is None:
        track.idle_full_since = now
    was = track.stuck
    track.stuck = now - track.idle_full_since >= cfg.window_s
    if track.stuck and not was:
        track.flagged_total += 1
        return True
    return False


def admin_token(path: str) -> str | None:
    """The token in path (None when unreadable: the call then goes without and gets 401)."""
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None
    return os.environ.get("PD_PROXY_ADMIN_TOKEN") or None


def http(method: str, url: str, timeout: float, token: str | None = None) -> tuple[int | None, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token and method == "POST":
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def recycle(target: Target, cfg: Config, run: Callable[[list[str]], int] | None = None) -> str:
    """Drain through every proxy, restart through the supervisor, undrain; a one-line outcome.

    A proxy that refuses the drain stops the recycle (the instance would still get requests
    there); the proxies already drained are undrained again."""
    token = admin_token(cfg.admin_token_file)
    drained: list[str] = []
    for proxy in cfg.proxies:
        base = f"{proxy}/v1/instances/{target.name}"
        status, _ = http("POST", f"{base}/drain?timeout={cfg.drain_timeout_s:g}", cfg.drain_timeout_s + 10, token)
        if status != 200:
            for done in drained:
                http("POST", f"{done}/v1/instances/{target.name}/undrain", 10, token)
            return f"not recycled: drain through {proxy} answered {status}"
        drained.append(proxy)
    argv = [a.replace("{service}", target.service).replace("{name}", target.name) for a in cfg.restart_argv]
    rc = (run or _run)(argv)
    undrained = [http("POST", f"{p}/v1/instances/{target.name}/undrain", 10, token)[0] for p in drained]
    return f"recycled: restart rc={rc}, undrain {' '.join(str(u) for u in undrained)}"


def _run(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, check=False, timeout=600, capture_output=True).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 127


def render_prom(tracks: Sequence[Track], cfg: Config) -> str:
    out = ["# HELP pd_watchdog_kv_stuck 1 when the instance's KV usage stayed at or above the threshold "
           "with no request running or waiting for the whole window.",
           "# TYPE pd_watchdog_kv_stuck gauge"]
    out += [f'pd_watchdog_kv_stuck{{instance="{t.name}"}} {int(t.stuck)}' for t in tracks]
    out += ["# HELP pd_watchdog_kv_usage_perc KV cache usage last read (1 = full).",
            "# TYPE pd_watchdog_kv_usage_perc gauge"]
    out += [f'pd_watchdog_kv_usage_perc{{instance="{t.name}"}} {t.kv_usage:g}' for t in tracks if t.kv_usage is not None]
    out += ["# HELP pd_watchdog_flagged_total Times the instance was found stuck.",
            "# TYPE pd_watchdog_flagged_total counter"]
    out += [f'pd_watchdog_flagged_total{{instance="{t.name}"}} {t.flagged_total}' for t in tracks]
    out += ["# HELP pd_watchdog_recycles_total Drain-and-restart cycles run for a stuck instance.",
            "# TYPE pd_watchdog_recycles_total counter"]
    out += [f'pd_watchdog_recycles_total{{instance="{t.name}"}} {t.recycles}' for t in tracks]
    out += ["# HELP pd_watchdog_scrape_errors 1 when the instance's /metrics could not be read last round.",
            "# TYPE pd_watchdog_scrape_errors gauge"]
    out += [f'pd_watchdog_scrape_errors{{instance="{t.name}"}} {int(t.error is not None)}' for t in tracks]
    return "\n".join(out) + "\n"


def _write(path: str, text: str) -> None:
    """Whole file or nothing: readers never see half a round."""
    if not path:
        return
    tmp = Path(path + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    tmp.replace(path)


def one_round(cfg: Config, tracks: dict[str, Track], now: float | None = None,
              fetch: Callable[[str], tuple[int | None, str]] | None = None) -> None:
    now = time.monotonic() if now is None else now
    fetch = fetch or (lambda url: http("GET", url, max(1.0, min(10.0, cfg.interval_s))))
    for target in cfg.targets:
        track = tracks.setdefault(target.name, Track(target.name))
        status, body = fetch(target.metrics_url)
        try:
            if status != 200:
                raise ValueError(f"/metrics answered {status}: {body[:80]}")
            sample = parse_metrics(body)
        except ValueError as exc:
            track.error, track.idle_full_since, track.stuck = str(exc), None, False
            continue
        if observe(track, sample, now, cfg):
            LOG.warning(json.dumps({"event": "kv_stuck", "instance": target.name, "kv_usage": sample.kv_usage,
                                    "window_s": cfg.window_s, "action": cfg.action}))
            if cfg.action == "recycle":
                track.last_action = recycle(target, cfg)
                track.recycles += 1
                track.idle_full_since, track.stuck = None, False
                LOG.warning(json.dumps({"event": "kv_recycle", "instance": target.name,
                                        "outcome": track.last_action}))
    ordered = [tracks[t.name] for t in cfg.targets]
    state = {"updated": time.time(), "threshold": cfg.threshold, "window_s": cfg.window_s, "action": cfg.action,
             "instances": {t.name: {k: v for k, v in asdict(t).items() if k != "name"}
                           for t in ordered}}
    _write(cfg.state_file, json.dumps(state, indent=1) + "\n")
    _write(cfg.prom_file, render_prom(ordered, cfg))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pd-watchdog", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="JSON: instances, threshold, window_s, ...")
    parser.add_argument("--once", action="store_true", help="one round, then exit (for tests and cron)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        cfg = parse_config(json.loads(args.config.read_text()))
    except (OSError, ValueError) as exc:  # ConfigError and JSONDecodeError are ValueErrors
        print(f"pd-watchdog: {args.config}: {exc}", file=sys.stderr)
        return 2
    LOG.info("watching %s: KV >= %g idle for %gs -> %s", ", ".join(t.name for t in cfg.targets),
             cfg.threshold, cfg.window_s, cfg.action)
    tracks: dict[str, Track] = {}
    while True:
        one_round(cfg, tracks)
        if args.once:
            return 0
        time.sleep(cfg.interval_s)


if __name__ == "__main__":
    sys.exit(main())
