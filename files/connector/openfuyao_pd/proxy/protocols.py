"""Request shapes for each KV connector (see docs/proxy.md, "Protocols").

mooncake_v1  vllm-ascend MooncakeConnectorV1: P gets do_remote_decode, max_tokens=1, min_tokens=1,
             no stream; D gets P's kv_transfer_params unchanged.
nixl         upstream NixlConnector: like mooncake_v1 but min_tokens / min_completion_tokens are
             dropped on P (not supported there) and the client's values go to D.
mooncake     upstream MooncakeConnector: P and D run concurrently under one transfer_id; D gets
             remote_bootstrap_addr and remote_engine_id of the chosen P.
centralized  UCM / shared storage: P with max_tokens=1, no stream, no params; then D with the
             client's body (D finds the KV in the store by prefix hash).
mooncake_layerwise  vllm-ascend MooncakeLayerwiseConnector: D first with do_remote_prefill and the
             proxy's metaserver URL; P is sent from the metaserver with the params D posted there
             (layerwise.py). vllm-ascend's KV pool (AscendStoreConnector inside a MultiConnector with
             MooncakeConnectorV1) speaks mooncake_v1.
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

NEEDS_PARAMS = ("mooncake_v1", "nixl")  # protocols where D needs kv_transfer_params returned by P


def prefill_body(body: dict[str, Any], protocol: str, transfer_id: str | None = None) -> dict[str, Any]:
    """The request sent to a prefill instance."""
    out = copy.copy(body)
    out["stream"] = False
    out.pop("stream_options", None)
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out.pop("kv_transfer_params", None)
    if protocol == "mooncake_v1":
        # An EOS as the first token would finish the request STOPPED and P would return no params.
        out["min_tokens"] = 1
        out.pop("min_completion_tokens", None)
    else:
        out.pop("min_tokens", None)
        out.pop("min_completion_tokens", None)
    if protocol in NEEDS_PARAMS:
        out["kv_transfer_params"] = {
            "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
            "remote_block_ids": None, "remote_host": None, "remote_port": None,
        }
    elif protocol == "mooncake":
        out["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False,
                                     "transfer_id": transfer_id}
    return out


def decode_body(
    body: dict[str, Any],
    protocol: str,
    params: dict[str, Any] | None = None,
    transfer_id: str | None = None,
    bootstrap_addr: str | None = None,
    engine_id: str | None = None,
) -> dict[str, Any]:
    """The request sent to a decode instance after (or, for `mooncake`, alongside) prefill."""
    out = copy.copy(body)
    out.pop("kv_transfer_params", None)
    if protocol in NEEDS_PARAMS and params:
        out["kv_transfer_params"] = params
    elif protocol == "mooncake":
        out["kv_transfer_params"] = {
            "do_remote_decode": False, "do_remote_prefill": True, "remote_bootstrap_addr": bootstrap_addr,
            "remote_engine_id": engine_id, "transfer_id": transfer_id,
        }
    return out


BATCH_KV_TRANSFER_PARAMS = "batch_kv_transfer_params"  # vllm-ascend's key for several children


def child_request_ids(path: str, request_id: str, body: dict[str, Any]) -> list[str]:
    """The external ids vLLM gives a request sent with X-Request-Id (pd-proxies.md §0.1): the
    ids a layerwise decode posts to the metaserver. A completion's list of prompts is one child each."""
    if path.endswith("/chat/completions"):
        return [f"chatcmpl-{request_id}"]
    prompt = body.get("prompt")
    token_ids = isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
    count = len(prompt) if isinstance(prompt, list) and prompt and not token_ids else 1
    return [f"cmpl-{request_id}-{i}" for i in range(count)]


def layerwise_decode_body(body: dict[str, Any], metaserver_url: str) -> dict[str, Any]:
    """The request sent first, to D: it posts its blocks to the metaserver and waits for P's push."""
    out = copy.copy(body)
    out["kv_transfer_params"] = {"do_remote_decode": False, "do_remote_prefill": True, "metaserver": metaserver_url}
    return out


def layerwise_prefill_body(body: dict[str, Any], posted: dict[str, dict[str, Any]],
                           children: list[str]) -> dict[str, Any]:
    """The request sent to P from the metaserver, with the params D posted (per child for a batch)."""
    out = prefill_body(body, "mooncake_v1")  # max_tokens 1, min_tokens 1, no stream (same as the example)
    params = copy.deepcopy(posted[children[0]])
    if len(children) > 1:
        params[BATCH_KV_TRANSFER_PARAMS] = {c: posted[c] for c in children}
    out["kv_transfer_params"] = params
    return out


def local_body(body: dict[str, Any]) -> dict[str, Any]:
    """Local prefill on decode: the client's request with no kv_transfer_params."""
    out = copy.copy(body)
    out.pop("kv_transfer_params", None)
    return out


def new_transfer_id() -> str:
    return f"xfer-{uuid.uuid4()}"


def returned_params(prefill_json: Any) -> dict[str, Any] | None:
    if isinstance(prefill_json, dict):
        params = prefill_json.get("kv_transfer_params")
        if isinstance(params, dict) and params:
            return params
    return None


def prefill_cached_tokens(prefill_json: Any) -> int | None:
    """usage.prompt_tokens_details.cached_tokens as reported by P (its prefix-cache hits), if any."""
    try:
        value = prefill_json["usage"]["prompt_tokens_details"]["cached_tokens"]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def rewrite_usage(obj: Any, cached_tokens: int) -> bool:
    """Put P's cached_tokens into a response object's usage; True if something changed."""
    if not isinstance(obj, dict):
        return False
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return False
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        details = {}
        usage["prompt_tokens_details"] = details
    details["cached_tokens"] = cached_tokens
    return True


# `"prompt_tokens_details": {"cached_tokens": N` as vLLM writes it (cached_tokens is the first field).
# A `"` inside a JSON string is always escaped, so this can only match real keys.
_CACHED = re.compile(rb'("prompt_tokens_details"\s*:\s*\{\s*"cached_tokens"\s*:\s*)(-?\d+|null)')


def patch_cached_tokens(data: bytes, cached_tokens: int) -> bytes | None:
    """Put P's cached_tokens into a serialised response without parsing it; None when the bytes do
    not hold exactly one such field (the caller then parses and rewrites the object)."""
    matches = _CACHED.findall(data, data.rfind(b'"usage"'))
    if len(matches) != 1 or data.count(b'"prompt_tokens_details"') != 1:
        return None
    return _CACHED.sub(lambda m: m.group(1) + str(cached_tokens).encode(), data, count=1)
