"""Pure parts of the PD proxy: config, estimation, routing, conditional disaggregation, protocols, metrics."""

from __future__ import annotations

import json

import pytest
from openfuyao_pd.proxy import metrics as prom
from openfuyao_pd.proxy import protocols
from openfuyao_pd.proxy.__main__ import main
from openfuyao_pd.proxy.config import ConfigError, build_config, load_file
from openfuyao_pd.proxy.routing import (
    Backend,
    PrefixIndex,
    block_hashes,
    decide_route,
    estimate_tokens,
    pick_backend,
    priority_for,
    prompt_key,
    url_host,
)

PLAN_PROXY = {
    "host": "localhost", "address": "127.0.0.1", "port": 9090, "protocol": "centralized", "model": "tiny-llama",
    "prefill": [{"name": "prefill-0", "host": "localhost", "address": "127.0.0.1", "port": 8100}],
    "decode": [{"name": "decode-0", "host": "localhost", "address": "127.0.0.1", "port": 8200}],
    "options": {},
}


# ------------------------------------------------------------------------------------- config
def test_plan_proxy_dict_is_the_config(tmp_path):
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(PLAN_PROXY))
    cfg = build_config(load_file(str(path)))
    assert (cfg.listen_host, cfg.port, cfg.protocol, cfg.model) == ("127.0.0.1", 9090, "centralized", "tiny-llama")
    assert [(b.name, b.address, b.port) for b in cfg.prefill] == [("prefill-0", "127.0.0.1", 8100)]
    assert cfg.options["routing"] == "least_load" and cfg.options["local_prefill_max_tokens"] == 0


def test_yaml_and_whole_plan_accepted(tmp_path):
    path = tmp_path / "plan.yml"
    path.write_text("schema_version: 1\nproxy:\n  port: 9191\n  protocol: nixl\n  decode:\n"
                    "    - {name: d, address: '::1', port: 8200}\n")
    cfg = build_config(load_file(str(path)))
    assert cfg.port == 9191 and cfg.protocol == "nixl" and cfg.decode[0].address == "::1"


def test_seed_flags_override_file():
    cfg = build_config(PLAN_PROXY, {"host": "::", "port": 8000, "protocol": "mooncake_v1",
                                    "prefiller_hosts": ["10.0.0.1", "10.0.0.2"], "prefiller_ports": ["8100"],
                                    "decoder_hosts": ["fe80::1"], "decoder_ports": ["7100", "7101"]})
    assert (cfg.listen_host, cfg.port, cfg.protocol) == ("::", 8000, "mooncake_v1")
    assert [(b.address, b.port) for b in cfg.prefill] == [("10.0.0.1", 8100), ("10.0.0.2", 8100)]
    assert [(b.name, b.address, b.port) for b in cfg.decode] == [("decode-0", "fe80::1", 7100),
                                                                  ("decode-1", "fe80::1", 7101)]


@pytest.mark.parametrize(("change", "message"), [
    ({"protocol": "p2p"}, "protocol must be one of"),
    ({"decode": []}, "no decode backend"),
    ({"options": {"routing": "random"}}, "options.routing must be one of"),
    ({"options": {"local_prefil_max_tokens": 5}},
     "unknown proxy option 'local_prefil_max_tokens'; did you mean local_prefill_max_tokens?"),
    ({"options": {"connect_timeout": 0}}, "options.connect_timeout must be between 0.05 and 600"),
    ({"options": {"health_interval": 1e-6}}, "options.health_interval must be between 0.1 and 3600, got 1e-06"),
    ({"options": {"max_body_bytes": "big"}}, "options.max_body_bytes must be an integer, got 'big'"),
    ({"options": {"health_timeout": float("nan")}}, "options.health_timeout must be a number"),
    ({"prefil": []}, "unknown key 'prefil' in the proxy config; did you mean prefill?"),
    ({"optons": {}}, "unknown key 'optons' in the proxy config; did you mean options?"),
    ({"decode": [{"name": "d", "address": "http://10.0.0.2:8200", "port": 8200}]}, "a URL or path: give only the host"),
    ({"decode": [{"name": "d", "address": "10.0.0.2:8200", "port": 8200}]}, "give the port in `port`"),
    ({"decode": [{"name": "d", "address": "bad host!", "port": 8200}]}, "not an IPv4/IPv6 address or a valid host"),
    ({"decode": [{"name": "d", "address": "0.0.0.0", "port": 8200}]}, "is the wildcard 0.0.0.0"),
    ({"decode": [{"name": "d", "address": "127.0.0.1", "port": 8200, "prot": 1}]},
     "unknown key 'prot' in decode[0]; did you mean port?"),
    ({"decode": [{"name": "d", "address": "127.0.0.1", "port": 8100}]},
     "decode backend d and prefill backend prefill-0 are the same endpoint 127.0.0.1:8100"),
    ({"bind": "http://0.0.0.0"}, "bind is 'http://0.0.0.0', a URL"),
    ({"options": {"priority_buckets": [[100, 0], [50, 1]]}}, "strictly increasing"),
    ({"prefill": [{"name": "x", "address": "a", "port": 70000}]}, "prefill[0].port must be between 1 and 65535"),
    ({"decode": [{"name": "d", "port": 1}]}, "decode[0].address needs an address"),
    ({"prefill": [{"name": "d", "address": "a", "port": 1}],
      "decode": [{"name": "d", "address": "b", "port": 2}]}, "backend name(s) d used more than once"),
])
def test_bad_config_gives_one_clear_line(change, message):
    with pytest.raises(ConfigError) as info:
        build_config({**PLAN_PROXY, **change})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_bad_config_exits_2_without_traceback(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**PLAN_PROXY, "options": {"routing": "fastest"}}))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pd-proxy: options.routing must be one of") and "Traceback" not in err
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    assert main(["--decoder-hosts", "a", "b", "--decoder-ports", "1", "2", "3"]) == 2
    assert "--decoder-hosts has 2 entries but --decoder-ports has 3" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- estimation
def test_prompt_estimation_without_tokenizer():
    key, ids = prompt_key({"prompt": "x" * 400}, chat=False)
    assert estimate_tokens(key, ids, 4.0) == 100
    key, ids = prompt_key({"prompt": list(range(37))}, chat=False)
    assert ids and estimate_tokens(key, ids, 4.0) == 37  # token ids are counted exactly
    key, ids = prompt_key({"messages": [{"role": "user", "content": "y" * 80},
                                        {"role": "user", "content": [{"type": "text", "text": "z" * 40}]}]},
                          chat=True)
    assert not ids and 30 <= estimate_tokens(key, ids, 4.0) <= 40


def test_block_hashes_are_chained_prefix_hashes():
    a = block_hashes("A" * 256 + "B" * 256, False, 64, 4.0)
    b = block_hashes("A" * 256 + "C" * 256, False, 64, 4.0)
    c = block_hashes("C" * 256 + "B" * 256, False, 64, 4.0)
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]
    assert c[1] != a[1]  # same block content after a different prefix is a different block
    assert block_hashes("short", False, 64, 4.0) == []


# ------------------------------------------------------------------------------------- routing
def _backends(n: int) -> list[Backend]:
    return [Backend(name=f"d{i}", role="decode", address="127.0.0.1", port=1000 + i, prefix=PrefixIndex(1000))
            for i in range(n)]


def test_least_load_uses_tokens_not_request_count():
    b = _backends(3)
    b[0].acquire(5000)
    b[1].acquire(10)
    b[1].acquire(10)
    chosen, _ = pick_backend(b, "least_load", 0, [], 8192)
    assert chosen is b[2]
    b[2].acquire(100)
    chosen, _ = pick_backend(b, "least_load", 0, [], 8192)
    assert chosen is b[1]  # 20 tokens in 2 requests beats 100 tokens in 1


def test_round_robin_cycles():
    b = _backends(3)
    b[0].acquire(10**6)
    assert [pick_backend(b, "round_robin", i, [], 0)[0].name for i in range(4)] == ["d0", "d1", "d2", "d0"]


def test_prefix_affinity_prefers_cached_backend_until_imbalanced():
    b = _backends(2)
    hashes = block_hashes("Q" * 4096, False, 64, 4.0)
    b[1].prefix.insert(hashes)
    b[1].acquire(1000)
    chosen, matched = pick_backend(b, "prefix_affinity", 0, hashes, 8192)
    assert chosen is b[1] and matched == len(hashes)
    b[1].acquire(10000)  # now far busier than d0: balance wins
    chosen, matched = pick_backend(b, "prefix_affinity", 0, hashes, 8192)
    assert chosen is b[0] and matched == 0
    chosen, _ = pick_backend(b, "least_load", 0, hashes, 8192)
    assert chosen is b[0]


def test_prefix_index_is_bounded_lru():
    index = PrefixIndex(3)
    index.insert([1, 2, 3])
    index.insert([4])
    assert index.match([1, 2]) == 0 and index.match([2, 3, 4]) == 3


@pytest.mark.parametrize(("uncached", "queue", "d_inflight", "thresholds", "expected"), [
    (100, 0, 0, (0, 0, 0), ("disagg", "default")),             # off when thresholds are 0
    (100, 0, 0, (100, 0, 0), ("local", "short_prompt")),       # == threshold -> local
    (101, 0, 0, (100, 0, 0), ("disagg", "default")),
    (5000, 3, 0, (0, 3, 0), ("local", "prefill_queue")),       # queue >= threshold
    (5000, 2, 0, (0, 3, 0), ("disagg", "default")),
    (10, 0, 8, (100, 0, 8), ("disagg", "decode_busy")),        # decode too busy vetoes
    (10, 0, 7, (100, 0, 8), ("local", "short_prompt")),
    (5000, None, 0, (0, 0, 0), ("local", "no_prefill")),
])
def test_conditional_disaggregation_decision(uncached, queue, d_inflight, thresholds, expected):
    assert decide_route(uncached, queue, d_inflight, *thresholds) == expected


def test_priority_buckets():
    buckets = [(512, 0), (2048, 1), (8192, 2)]
    assert [priority_for(t, buckets) for t in (1, 512, 513, 2048, 8192, 8193)] == [0, 0, 1, 1, 2, 3]


def test_ipv6_urls_are_bracketed():
    assert url_host("::1") == "[::1]" and url_host("10.0.0.1") == "10.0.0.1"
    assert Backend(name="x", role="decode", address="fe80::2", port=80).url == "http://[fe80::2]:80"


# ------------------------------------------------------------------------------------- protocols
BODY = {"model": "m", "prompt": "hi", "max_tokens": 50, "min_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}, "max_completion_tokens": 50}


def test_mooncake_v1_prefill_request():
    p = protocols.prefill_body(BODY, "mooncake_v1")
    assert p["stream"] is False and "stream_options" not in p
    assert (p["max_tokens"], p["min_tokens"], p["max_completion_tokens"]) == (1, 1, 1)
    assert p["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                                       "remote_block_ids": None, "remote_host": None, "remote_port": None}
    assert BODY["max_tokens"] == 50 and "kv_transfer_params" not in BODY  # client body untouched


def test_nixl_drops_min_tokens_on_prefill_and_restores_on_decode():
    p = protocols.prefill_body(BODY, "nixl")
    assert "min_tokens" not in p and p["kv_transfer_params"]["do_remote_decode"] is True
    params = {"remote_engine_id": "e", "remote_block_ids": [1, 2], "remote_host": "h", "remote_port": 5,
              "remote_request_id": "r", "do_remote_prefill": True}
    d = protocols.decode_body(BODY, "nixl", params)
    assert d["min_tokens"] == 5 and d["max_tokens"] == 50 and d["stream"] is True
    assert d["kv_transfer_params"] is params  # verbatim


def test_upstream_mooncake_shapes():
    p = protocols.prefill_body(BODY, "mooncake", "xfer-1")
    assert p["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": "xfer-1"}
    d = protocols.decode_body(BODY, "mooncake", transfer_id="xfer-1", bootstrap_addr="http://[::1]:8998",
                              engine_id="7")
    assert d["kv_transfer_params"] == {"do_remote_decode": False, "do_remote_prefill": True, "transfer_id": "xfer-1",
                                       "remote_bootstrap_addr": "http://[::1]:8998", "remote_engine_id": "7"}
    assert protocols.new_transfer_id().startswith("xfer-")


def test_centralized_sends_no_params():
    p = protocols.prefill_body(BODY, "centralized")
    assert "kv_transfer_params" not in p and p["max_tokens"] == 1 and p["stream"] is False
    assert "kv_transfer_params" not in protocols.decode_body({**BODY, "kv_transfer_params": {"x": 1}}, "centralized")


def test_usage_rewrite_and_missing_params():
    assert protocols.returned_params({"choices": []}) is None
    assert protocols.returned_params({"kv_transfer_params": None}) is None
    assert protocols.prefill_cached_tokens({"usage": {"prompt_tokens_details": {"cached_tokens": 32}}}) == 32
    assert protocols.prefill_cached_tokens({"usage": {"prompt_tokens_details": None}}) is None
    obj = {"usage": {"prompt_tokens": 100, "prompt_tokens_details": None}}
    assert protocols.rewrite_usage(obj, 32) and obj["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    assert not protocols.rewrite_usage({"usage": None}, 3)


# ------------------------------------------------------------------------------------- metrics text
def test_prometheus_text_format():
    reg = prom.Registry()
    c = reg.counter("pd_proxy_x_total", "doc", ("a",))
    c.inc('q"uote')
    h = reg.histogram("pd_proxy_h_seconds", "doc", ("stage",), buckets=(0.1, 1.0))
    h.observe("e2e", value=0.5)
    h.observe("e2e", value=5)
    text = reg.render()
    assert 'pd_proxy_x_total{a="q\\"uote"} 1.0' in text
    assert 'pd_proxy_h_seconds_bucket{le="0.1",stage="e2e"} 0.0' in text
    assert 'pd_proxy_h_seconds_bucket{le="1.0",stage="e2e"} 1.0' in text
    assert 'pd_proxy_h_seconds_bucket{le="+Inf",stage="e2e"} 2.0' in text
    assert 'pd_proxy_h_seconds_count{stage="e2e"} 2.0' in text and "# TYPE pd_proxy_h_seconds histogram" in text


def test_planner_backend_entries_are_accepted():
    """The planner writes extra facts per backend (engine_id, kv_port, tp/dp, bootstrap for upstream mooncake)."""
    entry = {"name": "prefill-0", "host": "h1", "address": "10.0.0.1", "port": 8100, "engine_id": "0",
             "kv_port": 20001, "tensor_parallel_size": 2, "data_parallel_size": 1,
             "bootstrap_host": "10.0.0.1", "bootstrap_port": 20001}
    cfg = build_config({**PLAN_PROXY, "protocol": "mooncake", "bind": "0.0.0.0", "prefill": [entry]})
    assert cfg.listen_host == "0.0.0.0"
    assert cfg.prefill[0].options == {"bootstrap_host": "10.0.0.1", "bootstrap_port": 20001, "engine_id": "0"}
