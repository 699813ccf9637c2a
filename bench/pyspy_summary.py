#!/usr/bin/env python3
"""Where the proxy's time goes: a py-spy raw profile (`proxy_bench.py --py-spy`) grouped by layer.

    python bench/pyspy_summary.py bench/results/logs/pd-proxy-1p1d.pyspy.txt

Each sample goes to the layer of its innermost frame that belongs to one; socket sends and the
event loop's wait are told apart by the leaf frame, since that is where the time is spent.
"""

from __future__ import annotations

import collections
import sys

LAYERS = (("codec.py", "json"), ("json/", "json"), ("proxy/metrics.py", "metrics"), ("prometheus_client", "metrics"), ("routing.py", "routing"),
          ("relay.py", "upstream client (relay.py)"), ("aiohttp/client", "aiohttp client"),
          ("aiohttp/connector", "aiohttp client"), ("aiohttp/payload", "aiohttp client"),
          ("aiohttp/web", "aiohttp server"), ("aiohttp/http", "aiohttp server"), ("aiohttp/streams", "aiohttp server"),
          ("openfuyao_pd", "proxy request flow"), ("asyncio", "event loop"), ("uvloop", "event loop"))
SENDS = ("_writelines (aiohttp", "_SelectorSocketTransport.write", "_send (openfuyao_pd/proxy/relay.py")


def layer(frames: list[str]) -> str:
    leaf = frames[-1]
    if any("importlib" in f for f in frames):
        return "start-up (imports)"
    if leaf.startswith("Runner.run") or leaf.startswith("EpollSelector.select"):
        return "idle (waiting in the event loop)"
    if any(leaf.startswith(s) for s in SENDS):
        return "socket send (kernel)"
    for frame in reversed(frames):
        for needle, name in LAYERS:
            if needle in frame:
                return name
    return "other"


def main() -> int:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(sys.argv[1], encoding="utf-8") as handle:
        lines = handle.readlines()
    for line in lines:
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack:
            continue
        counts[layer(stack.split(";"))] += int(n)
        total += int(n)
    print("| layer | share of samples |\n|---|---|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / total:.1f}% |")
    print(f"\n{total} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
