"""Fuzz the proxy's config loading: any file gives a valid config or one ConfigError line, never a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfuyao_pd.proxy import options as options_table
from openfuyao_pd.proxy.__main__ import main
from openfuyao_pd.proxy.config import TOP_KEYS, ConfigError, ProxyConfig, build_config, load_file

VALID: dict[str, Any] = {
    "host": "proxy-host", "address": "10.0.0.3", "bind": "10.0.0.3", "port": 9090, "protocol": "mooncake",
    "model": "tiny-llama",
    "prefill": [{"name": "prefill-0", "host": "h1", "address": "10.0.0.1", "port": 8100, "engine_id": "0",
                 "kv_port": 20001, "tensor_parallel_size": 1, "data_parallel_size": 1,
                 "bootstrap_host": "10.0.0.1", "bootstrap_port": 8998}],
    "decode": [{"name": "decode-0", "host": "h2", "address": "fe80::1", "port": 8200, "engine_id": "1"}],
    "options": {"routing": "prefix_affinity", "health_interval": 1.0, "priority_buckets": [[512, 0], [1024, 1]]},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["0.0.0.0", "::", "http://x:1", "a:b", "[::1]", "1e-6",
                                                           "least_load", "-1", "65536", "nan", "inf"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
option_names = st.sampled_from([o.name for o in options_table.OPTIONS] + ["optons", "health_intervall"])
keys = st.one_of(st.sampled_from([*TOP_KEYS, "prefil", "optons", "_comment"]), st.text(max_size=10))


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """The valid config with a few random edits at every level (top, backend, options)."""
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "backend", "option", "delete", "whole"]))
        if not isinstance(data, dict):
            break  # "whole" replaced the mapping itself
        if where == "top":
            data[draw(keys)] = draw(values)
        elif where == "backend":
            role = draw(st.sampled_from(["prefill", "decode"]))
            if isinstance(data.get(role), list) and data[role] and isinstance(data[role][0], dict):
                data[role][0][draw(st.sampled_from(["address", "port", "name", "options", "bootstrap_port",
                                                    "dp_rank", "engine_id", "prot"]))] = draw(values)
        elif where == "option" and isinstance(data.get("options"), dict):
            data["options"][draw(option_names)] = draw(values)
        elif where == "delete" and data:
            data.pop(draw(st.sampled_from(sorted(data, key=str))), None)
        elif where == "whole":
            data = draw(values)
    return data


def _check(text: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        Path(handle.name).write_bytes(text)
        try:
            cfg = build_config(load_file(handle.name))
        except ConfigError as exc:
            message = str(exc)
            assert message and "\n" not in message and "Traceback" not in message
            return
    assert isinstance(cfg, ProxyConfig) and cfg.decode
    assert set(cfg.options) == set(options_table.DEFAULTS)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_configs_load_or_fail_with_one_line(data):
    _check(json.dumps(data, allow_nan=True).encode())


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 mutated().map(lambda d: json.dumps(d)[: len(json.dumps(d)) // 2].encode())))
def test_random_bytes_and_truncated_files_fail_with_one_line(raw):
    _check(raw)


def test_cli_exit_2_for_a_sample_of_bad_files(tmp_path, capsys):
    for i, body in enumerate([b"\x89PNG\r\n\x1a\n\x00", b"- [" * 5000, b"{" * 50_000, b"prefill: [\n",
                              json.dumps({**VALID, "optons": {}}).encode()]):
        path = tmp_path / f"c{i}.json"
        path.write_bytes(body)
        assert main(["--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pd-proxy: ") and err.count("\n") == 1, err
