"""GPU-run helper (tests/gpu/run_h200.sh): greedy equality of the PD path against a plain
instance, and the KV-transfer counters of the decode side. Standard library only, so it runs
with the GPU image's python3 and nothing else.

  python3 pd_check.py greedy --pd URL --plain URL --model NAME --out FILE.json
  python3 pd_check.py metrics --url URL --out FILE.txt
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from dataclasses import asdict, dataclass

# Several KV blocks each (16-token blocks, the tiny tokenizer: ~300 tokens), under max-model-len
# 512 with 32 new tokens; one short prompt (a single partial block) as the edge case.
PROMPTS = [
    "The prefill instance computes the cache of this prompt; the decode instance must load it. " * 7,
    "One two three four five six seven eight nine ten, the proxy routes every request. " * 6,
    "Ascend and CUDA hosts share one inventory format, one plan and one proxy protocol. " * 6,
    "Disaggregated serving splits the prompt pass from the token by token generation. " * 6,
    "A tiny random model is enough to prove the handover: equal ids mean equal cache. " * 6,
    "Every layer writes its blocks, the connector moves them, the decoder reads them. " * 6,
    "Short prompt.",
]
KV_LINE = re.compile(r"^(vllm:(nixl_[a-z_]+|external_prefix_cache_[a-z_]+|prompt_tokens_by_source_total"
                     r"|kv_[a-z_]+|mooncake[a-z_]*)\S*)\s+(\S+)$")


@dataclass
class Pair:
    prompt_chars: int
    pd_ids: list[int]
    plain_ids: list[int]
    equal: bool


def complete(url: str, model: str, prompt: str, max_tokens: int) -> list[int]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}
    req = urllib.request.Request(url.rstrip("/") + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        out = json.loads(resp.read())
    return [int(t) for t in out["choices"][0]["token_ids"]]


def greedy(args: argparse.Namespace) -> int:
    pairs = []
    for p in PROMPTS:
        pd = complete(args.pd, args.model, p, args.max_tokens)
        plain = complete(args.plain, args.model, p, args.max_tokens)
        pairs.append(Pair(len(p), pd, plain, pd == plain))
    equal = sum(x.equal for x in pairs)
    report = {"pd_url": args.pd, "plain_url": args.plain, "max_tokens": args.max_tokens,
              "prompts": len(pairs), "equal": equal, "pairs": [asdict(x) for x in pairs]}
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"greedy: {equal}/{len(pairs)} prompts give equal token ids through PD ({args.pd}) and plain ({args.plain})")
    for x in pairs:
        print(f"  {'EQUAL' if x.equal else 'DIFF '} chars={x.prompt_chars:4d} pd={x.pd_ids[:8]}... plain={x.plain_ids[:8]}...")
    return 0 if equal == len(pairs) else 1


def metrics(args: argparse.Namespace) -> int:
    with urllib.request.urlopen(args.url.rstrip("/") + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    lines = [ln for ln in text.splitlines() if KV_LINE.match(ln)]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"kv metrics of {args.url}:")
    for ln in lines:
        print("  " + ln)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("greedy")
    g.add_argument("--pd", required=True)
    g.add_argument("--plain", required=True)
    g.add_argument("--model", required=True)
    g.add_argument("--max-tokens", type=int, default=32)
    g.add_argument("--out", required=True)
    m = sub.add_parser("metrics")
    m.add_argument("--url", required=True)
    m.add_argument("--out", required=True)
    args = ap.parse_args()
    return greedy(args) if args.cmd == "greedy" else metrics(args)


if __name__ == "__main__":
    sys.exit(main())
