"""Broken inventories, as a platform engineer writes them: each must fail with its exact
one-line message(s) naming the host/variable and the fix, and give no plan.

INI and YAML cases go through Ansible's own inventory parser (INI values arrive as strings,
YAML keeps its types), then the planner, the way the pd_plan action hands them over.
"""

from __future__ import annotations

import ast
import re
import shlex
import textwrap
from pathlib import Path

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_support import load_inventory_file

# One Ascend host running 1P1D with Mooncake (the seed's shape) and the proxy.
ASCEND_1P1D = """\
[prefill]
n1 ansible_host=10.0.0.1
[decode]
n1
[proxy]
n1
[all:vars]
pd_platform=ascend
pd_connector=mooncake
pd_model=/m
pd_tp=2
"""


def ini(extra: str = "", base: str = ASCEND_1P1D) -> tuple[str, str]:
    return ("cluster.ini", base + textwrap.dedent(extra))


def yml(text: str) -> tuple[str, str]:
    return ("cluster.yml", textwrap.dedent(text))


def sixteen(all_vars: str) -> tuple[str, str]:
    """8 prefill + 8 decode hosts, group vars from all_vars."""
    lines = ["[prefill]"] + [f"p{i:02d} ansible_host=10.0.1.{i}" for i in range(1, 9)]
    lines += ["[decode]"] + [f"d{i:02d} ansible_host=10.0.2.{i}" for i in range(1, 9)]
    lines += ["[proxy]", "p01", "[all:vars]", "pd_platform=ascend", "pd_model=/m"]
    return ("cluster.ini", "\n".join(lines) + "\n" + textwrap.dedent(all_vars))


CASES = {
    "group-names-capitalised": (
        ini(base="[Prefill]\nn1 ansible_host=10.0.0.1\n[Decode]\nn1\n[Proxy]\nn1\n"),
        [
            "group prefill is empty: add at least one host under [prefill] in the inventory (the inventory "
            "has a group [Prefill]: rename it; group names are case-sensitive); groups found: Decode, Prefill, Proxy",
            "group decode is empty: add at least one host under [decode] in the inventory (the inventory "
            "has a group [Decode]: rename it; group names are case-sensitive); groups found: Decode, Prefill, Proxy",
            "group proxy is empty: add at least one host under [proxy] in the inventory (the inventory "
            "has a group [Proxy]: rename it; group names are case-sensitive); groups found: Decode, Prefill, Proxy",
        ],
    ),
    "yaml-groups-not-under-children": (
        yml(
            """\
            all:
              prefill:
                hosts: {n1: {}}
              decode:
                hosts: {n1: {}}
              proxy:
                hosts: {n1: {}}
            """
        ),
        [
            f"group {g} is empty: add at least one host under [{g}] in the inventory; the inventory has no "
            "hosts at all: check that it parses (ansible-inventory -i INVENTORY --graph) and that YAML groups "
            "sit under all: children:"
            for g in ("prefill", "decode", "proxy")
        ],
    ),
    "yaml-groups-as-lists": (
        yml("prefill: [n1]\ndecode: [n1]\nproxy: [n1]\n"),
        [
            f"group {g} is empty: add at least one host under [{g}] in the inventory; the inventory has no "
            "hosts at all: check that it parses (ansible-inventory -i INVENTORY --graph) and that YAML groups "
            "sit under all: children:"
            for g in ("prefill", "decode", "proxy")
        ],
    ),
    "yaml-hosts-as-a-list": (
        # Ansible only warns, keeps the groups it read before the bad entry, and has no host.
        yml("all:\n  children:\n    prefill: {hosts: [n1]}\n    decode: {hosts: {n1: {}}}\n    proxy: {hosts: {n1: {}}}\n"),
        [
            f"group {g} is empty: add at least one host under [{g}] in the inventory; the inventory has no "
            "hosts at all: check that it parses (ansible-inventory -i INVENTORY --graph) and that YAML groups "
            "sit under all: children:"
            for g in ("prefill", "decode", "proxy")
        ],
    ),
    "misspelled-group-among-others": (
        ini(base="[prefill]\nn1 ansible_host=10.0.0.1\n[decoder]\nn1\n[proxy]\nn1\n[storage]\nn1\n"),
        ["group decode is empty: add at least one host under [decode] in the inventory (the inventory has a "
         "group [decoder]: rename it); groups found: decoder, prefill, proxy, storage"],
    ),
    "two-names-one-machine": (
        ini(
            base="[prefill]\np1 ansible_host=10.0.0.1\n[decode]\nd1 ansible_host=10.0.0.1\n[proxy]\np1\n"
            "[all:vars]\npd_platform=ascend\npd_model=/m\npd_tp=2\n"
        ),
        [
            "hosts p1, d1 (one machine: all are 10.0.0.1): device 0 (prefill-0, decode-0), 1 (prefill-0, decode-0) "
            "given twice: list the machine once in the inventory, or give each name its own "
            "pd_prefill_devices/pd_decode_devices",
        ],
    ),
    "one-machine-two-spellings": (
        ini(
            base="[prefill]\np1 ansible_host=fd00:0::1\n[decode]\nd1 ansible_host=[FD00::1]\n[proxy]\np1\n"
            "[all:vars]\npd_platform=cuda\npd_model=/m\n"
        ),
        [
            "hosts p1, d1 (one machine: all are fd00::1): device 0 (prefill-0, decode-0) given twice: list the "
            "machine once in the inventory, or give each name its own pd_prefill_devices/pd_decode_devices",
        ],
    ),
    "ports-clash-across-names": (
        ini(
            base="[prefill]\np1 ansible_host=10.0.0.1\n[decode]\nd1 ansible_host=10.0.0.2\n"
            "[proxy]\npx ansible_host=10.0.0.1\n[all:vars]\npd_platform=cpu\npd_model=/m\n"
            "pd_proxy_port=8100\n"
        ),
        [
            "hosts p1, px (one machine: all are 10.0.0.1): port clash: prefill-0 http 8100 overlaps proxy "
            "http 8100: change pd_proxy_port",
        ],
    ),
    "model-empty": (ini("pd_model=''\n"), ["pd_model='' is empty: set the model directory on the hosts (or builtin:tiny-llama)"]),
    "model-looks-like-a-flag": (
        ini("pd_model=--help\n"),
        ["pd_model='--help' starts with '-' and would be read as a vllm flag: set the model directory on the "
         "hosts (or builtin:tiny-llama)"],
    ),
    "served-name-with-space": (
        ini("pd_served_model_name='my model'\n"),
        ["pd_served_model_name='my model' contains white space: the name clients ask for is one word"],
    ),
    "gpu-memory-yaml-yes": (
        yml(
            """\
            all:
              vars: {pd_platform: ascend, pd_model: /m, pd_tp: 2, pd_gpu_memory_utilization: yes}
              children:
                prefill: {hosts: {n1: {ansible_host: 10.0.0.1}}}
                decode: {hosts: {n1: {}}}
                proxy: {hosts: {n1: {}}}
            """
        ),
        ["host n1: pd_gpu_memory_utilization=True must be a number in (0, 1], e.g. 0.9"],
    ),
    "extra-args-port": (
        ini("pd_extra_args='--port 9000'\n"),
        ["host n1: pd_extra_args sets --port, which the plan owns: remove it and set pd_http_port_base instead"],
    ),
    "extra-args-kv-config": (
        ini("pd_extra_args='--kv-transfer-config {}'\n"),
        ["host n1: pd_extra_args sets --kv-transfer-config, which the plan owns: remove it and set pd_connector "
         "(connector settings: pd_kv_extra_config) instead"],
    ),
    "extra-args-role-tp-underscore-equals": (
        ini("pd_prefill_extra_args=['--tensor_parallel_size=4']\n"),
        ["host n1: pd_prefill_extra_args sets --tensor-parallel-size, which the plan owns: remove it and set "
         "pd_prefill_tp instead"],
    ),
    "extra-args-short-tp": (
        ini("pd_decode_extra_args='-tp 4'\n"),
        ["host n1: pd_decode_extra_args sets -tp, which the plan owns: remove it and set pd_decode_tp instead"],
    ),
    "extra-args-dotted-kv-config": (
        ini("pd_extra_args='--kv-transfer-config.kv_role kv_both'\n"),
        ["host n1: pd_extra_args sets --kv-transfer-config, which the plan owns: remove it and set pd_connector "
         "(connector settings: pd_kv_extra_config) instead"],
    ),
    "extra-args-positional": (
        ini("pd_extra_args='/other/model --enforce-eager'\n"),
        [
            "host n1: pd_extra_args starts with '/other/model', which is not a flag: extra arguments are "
            "--flag [value] pairs (the model is pd_model)",
            "host n1: pd_extra_args sets --enforce-eager, which the plan owns: remove it and set "
            "pd_enforce_eager instead",
        ],
    ),
    "env-key-not-a-shell-name": (
        ini("pd_env={'MY-VAR': '1'}\n"),
        ["host n1: pd_env key 'MY-VAR' is not a shell variable name (letters, digits, _; not starting with a digit)"],
    ),
    "env-overrides-visible-devices": (
        ini("pd_env={'ASCEND_RT_VISIBLE_DEVICES': '0,1'}\n"),
        ["host n1: pd_env sets ASCEND_RT_VISIBLE_DEVICES, which the plan owns: remove it and set pd_devices instead"],
    ),
    "decode-env-overrides-cuda-devices": (
        ini(
            base="[prefill]\nn1 ansible_host=10.0.0.1\n[decode]\nn1\n[proxy]\nn1\n[all:vars]\n"
            "pd_platform=cuda\npd_model=/m\npd_decode_env={'CUDA_VISIBLE_DEVICES': '3'}\n"
        ),
        ["host n1: pd_decode_env sets CUDA_VISIBLE_DEVICES, which the plan owns: remove it and set "
         "pd_decode_devices instead"],
    ),
    "env-value-multiline": (
        yml(
            """\
            all:
              vars: {pd_platform: ascend, pd_model: /m, pd_tp: 2, pd_env: {NOTE: "a\\nb"}}
              children:
                prefill: {hosts: {n1: {ansible_host: 10.0.0.1}}}
                decode: {hosts: {n1: {}}}
                proxy: {hosts: {n1: {}}}
            """
        ),
        ["host n1: pd_env.NOTE='a\\nb' contains a control character: remove it"],
    ),
    "env-value-a-list": (
        ini("pd_env={'PATHS': ['/a', '/b']}\n"),
        ["host n1: pd_env.PATHS=['/a', '/b'] must be a single value (string or number)"],
    ),
    "hccl-env-key": (
        ini("pd_hccl_env={'HCCL IF IP': '1.2.3.4'}\n"),
        ["host n1: pd_hccl_env key 'HCCL IF IP' is not a shell variable name (letters, digits, _; not starting "
         "with a digit)"],
    ),
    "proxy-routing-unknown": (
        ini("pd_proxy_routing=fastest\n"),
        ["host n1: pd_proxy_routing must be one of least_load, prefix_affinity, round_robin, got 'fastest'"],
    ),
    "proxy-retries-negative": (
        ini("pd_proxy_max_retries=-1\n"),
        ["host n1: pd_proxy_max_retries must be between 0 and 100, got -1"],
    ),
    "proxy-timeout-not-a-number": (
        ini("pd_proxy_connect_timeout=soon\n"),
        ["host n1: pd_proxy_connect_timeout must be a number, got 'soon'"],
    ),
    "proxy-health-interval-zero": (
        ini("pd_proxy_health_interval=0\n"),
        ["host n1: pd_proxy_health_interval must be between 0.1 and 3600, got 0"],
    ),
    "proxy-bool-maybe": (
        ini("pd_proxy_fallback_local_prefill=maybe\n"),
        ["host n1: pd_proxy_fallback_local_prefill must be true or false, got 'maybe'"],
    ),
    "proxy-buckets-decreasing": (
        ini("pd_proxy_priority_buckets=[[2048, 0], [512, 1]]\n"),
        ["host n1: pd_proxy_priority_buckets max_tokens must be strictly increasing"],
    ),
    "proxy-bind-with-port": (
        ini("pd_proxy_bind_host=0.0.0.0:9090\n"),
        ["host n1: pd_proxy_bind_host='0.0.0.0:9090' is not an IP address or host name: fix the value in the inventory"],
    ),
    "ansible-host-two-words": (
        ini(base=ASCEND_1P1D.replace("ansible_host=10.0.0.1", "ansible_host='10.0.0.1 10.0.0.2'")),
        ["host n1: ansible_host='10.0.0.1 10.0.0.2' is not an IP address or host name: fix ansible_host"],
    ),
    "bind-host-url": (
        ini("pd_bind_host=http://0.0.0.0\n"),
        ["host n1: pd_bind_host='http://0.0.0.0' is not an IP address or host name: fix the value in the inventory"],
    ),
    "dtype-unknown": (
        ini("pd_dtype=fp8\n"),
        ["host n1: pd_dtype='fp8' is not one of auto, half, float16, bfloat16, float, float32"],
    ),
    "nic-with-space": (
        ini("pd_nic_name='eth 0'\n"),
        ["host n1: pd_nic_name='eth 0' is not a network interface name (e.g. eth0)"],
    ),
    "hash-seed-random": (
        ini(
            base="[prefill]\nn1 ansible_host=10.0.0.1\n[decode]\nn1\n[proxy]\nn1\n[all:vars]\npd_platform=ascend\n"
            "pd_connector=ucm\npd_model=/m\npd_ucm_storage_backends=/mnt/kv\npd_python_hash_seed=random\n"
        ),
        ["host n1: pd_python_hash_seed='random' must be an integer in 0..4294967295"],
    ),
    "cpu-kvcache-words": (
        ini(
            base="[prefill]\nn1 ansible_connection=local\n[decode]\nn1\n[proxy]\nn1\n[all:vars]\npd_platform=cpu\n"
            "pd_model=/m\npd_cpu_kvcache_space=lots\n"
        ),
        ["host n1: pd_cpu_kvcache_space='lots' must be an integer >= 1"],
    ),
    "data-dir-relative": (
        ini("pd_data_dir=data\n"),
        ["host n1: pd_data_dir='data' must be an absolute path (e.g. /var/lib/openfuyao-pd)"],
    ),
    "connector-module-path-is-a-file": (
        ini("pd_kv_connector_module_path=/opt/conn.py\n"),
        ["host n1: pd_kv_connector_module_path='/opt/conn.py' must be a Python module path (e.g. package.module)"],
    ),
    "python-command-with-arguments": (
        ini("pd_python='python3 -u'\n"),
        ["host n1: pd_python='python3 -u' contains white space: the Python command on the host is one word"],
    ),
    "engine-id-with-space": (
        ini("pd_prefill_engine_ids=['engine 0']\n"),
        ["host n1: pd_prefill_engine_ids[0]='engine 0' contains white space: an engine id is one word"],
    ),
    "dp-address-url": (
        ini("pd_decode_dp_address=tcp://10.0.0.1\n"),
        ["host n1: pd_decode_dp_address='tcp://10.0.0.1' is not an IP address or host name: fix the value in "
         "the inventory"],
    ),
    "extra-arg-with-newline": (
        yml(
            """\
            all:
              vars: {pd_platform: ascend, pd_model: /m, pd_tp: 2, pd_extra_args: [--max-loras, "a\\nb"]}
              children:
                prefill: {hosts: {n1: {ansible_host: 10.0.0.1}}}
                decode: {hosts: {n1: {}}}
                proxy: {hosts: {n1: {}}}
            """
        ),
        ["host n1: pd_extra_args[1]='a\\nb' contains a control character: remove it"],
    ),
    "group-mistake-on-16-hosts-is-one-line": (
        sixteen("pd_prefill_tp=two\n"),
        ["hosts p01, p02, p03, p04, p05, p06, p07, p08: pd_prefill_tp='two' must be an integer >= 1"],
    ),
    "extra-args-boolean-item": (
        yml(
            """\
            all:
              vars: {pd_platform: ascend, pd_model: /m, pd_tp: 2, pd_extra_args: [--enable-chunked-prefill, true]}
              children:
                prefill: {hosts: {n1: {ansible_host: 10.0.0.1}}}
                decode: {hosts: {n1: {}}}
                proxy: {hosts: {n1: {}}}
            """
        ),
        ["host n1: pd_extra_args must be a list of strings (extra vllm serve arguments), got "
         "['--enable-chunked-prefill', True]"],
    ),
}


def problems_of(tmp_path: Path, source: tuple[str, str]) -> list[str]:
    name, text = source
    path = tmp_path / name
    path.write_text(text)
    inventory = load_inventory_file(path)
    try:
        build_plan(inventory)
    except PlanError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_inventory_gives_exact_lines_and_no_plan(case, tmp_path):
    source, expected = CASES[case]
    found = problems_of(tmp_path, source)
    assert found == expected
    for line in found:
        assert "\n" not in line and "Traceback" not in line


def test_missing_proxy_option_table_is_one_line(monkeypatch, tmp_path):
    from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan

    monkeypatch.setattr(pd_plan, "proxy_options_table", lambda: None)
    assert problems_of(tmp_path, ini("pd_proxy_max_retries=3\n")) == [
        "pd_proxy_* options cannot be checked: the collection lacks the proxy's option table "
        "files/connector/openfuyao_pd/proxy/options.py; reinstall the collection"
    ]


def plan_of(tmp_path: Path, source: tuple[str, str]) -> dict:
    name, text = source
    path = tmp_path / name
    path.write_text(text)
    return build_plan(load_inventory_file(path))


def test_ini_false_reaches_the_proxy_as_a_boolean(tmp_path):
    plan = plan_of(tmp_path, ini("pd_proxy_fallback_local_prefill=false\npd_proxy_max_retries=3\n"
                                 "pd_proxy_connect_timeout=2.5\n"))
    assert plan["proxy"]["options"] == {
        "fallback_local_prefill": False,
        "max_retries": 3,
        "connect_timeout": 2.5,
        "batch_priority": False,
    }


def test_bracketed_ipv6_host_gives_one_pair_of_brackets(tmp_path):
    plan = plan_of(tmp_path, ini(base=ASCEND_1P1D.replace("10.0.0.1", "[fd00::1]")))
    inst = plan["instances"][0]
    assert inst["address"] == "fd00::1"
    assert inst["health_url"] == "http://[fd00::1]:8100/health"
    assert inst["env"]["HCCL_IF_IP"] == "fd00::1"
    assert plan["proxy"]["prefill"][0]["address"] == "fd00::1"


def test_bracketed_ipv6_bind_host_is_written_without_brackets(tmp_path):
    plan = plan_of(tmp_path, ini("pd_proxy_bind_host=[::]\n"))
    assert plan["proxy"]["bind"] == "::"
    plan = plan_of(tmp_path, ini(base=ASCEND_1P1D.replace("10.0.0.1", "[fd00::1]")))
    assert plan["proxy"]["bind"] == "fd00::1"


def test_blank_around_the_address_is_dropped(tmp_path):
    plan = plan_of(tmp_path, ini(base=ASCEND_1P1D.replace("ansible_host=10.0.0.1", "ansible_host=' 10.0.0.1 '")))
    assert plan["instances"][0]["address"] == "10.0.0.1"


# ---------------------------------------------------------------- property-based: open-ended input

ONE_HOST = {
    "groups": {"prefill": ["n1"], "decode": ["n1"], "proxy": ["n1"]},
    "hostvars": {"n1": {"ansible_host": "10.0.0.1", "pd_platform": "ascend", "pd_model": "/m", "pd_tp": 2}},
}
# Written out here, not imported: the test must not trust the planner's own table.
OWNED_SPELLINGS = [
    "--port", "--port=8000", "--host", "--tensor-parallel-size", "--tensor_parallel_size=4", "-tp",
    "--data-parallel-size", "-dp", "--data-parallel-rpc-port", "--data-parallel-address",
    "--kv-transfer-config", "--kv_transfer_config={}", "--kv-transfer-config.kv_role", "--seed",
    "--max-model-len", "--max_num_seqs", "--max-num-batched-tokens", "--gpu-memory-utilization",
    "--block-size", "--dtype", "--enforce-eager", "--trust-remote-code", "--enable-prefix-caching",
    "--no-enable-prefix-caching", "--scheduling-policy", "--served-model-name", "--model",
]
FREE_FLAGS = [
    "--enable-chunked-prefill", "--max-loras", "--quantization", "--swap-space", "--disable-log-stats",
    "--compilation-config", "--additional-config", "--tokenizer-mode", "--load-format",
]
VALUE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda v: not v.startswith("-") and v.strip() == v and v
)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@st.composite
def extra_args(draw):
    words = []
    owned = False
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
            words.append(draw(st.sampled_from(OWNED_SPELLINGS)))
            owned = True
        else:
            words.append(draw(st.sampled_from(FREE_FLAGS)))
        if draw(st.booleans()):
            words.append(draw(VALUE))
    return words, owned


@settings(max_examples=300, deadline=None)
@given(extra_args(), st.booleans())
def test_extra_args_never_override_the_plan(case, as_string):
    words, owned = case
    inventory = {"groups": ONE_HOST["groups"], "hostvars": {"n1": dict(ONE_HOST["hostvars"]["n1"])}}
    if as_string and not any(CONTROL.search(w) for w in words):
        inventory["hostvars"]["n1"]["pd_extra_args"] = shlex.join(words)
    else:
        inventory["hostvars"]["n1"]["pd_extra_args"] = words
    bad_char = any(CONTROL.search(w) for w in words)
    try:
        plan = build_plan(inventory)
    except PlanError as exc:
        assert owned or bad_char, exc.problems
        assert all("\n" not in line for line in exc.problems)
        if owned:
            assert any("which the plan owns: remove it and set pd_" in line for line in exc.problems)
        return
    assert not owned and not bad_char
    for inst in plan["instances"]:
        assert inst["argv"][-len(words):] == words
        # Every flag the plan writes appears once: nothing was overridden.
        flags = [a for a in inst["argv"] if a.startswith("--")]
        assert flags.count("--port") == 1 and flags.count("--kv-transfer-config") == 1


OWNED_ENV = ["ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES"]
SHELL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_KEY = st.one_of(
    st.from_regex(SHELL, fullmatch=True).filter(lambda k: len(k) < 20),
    st.text(max_size=10),
    st.sampled_from(OWNED_ENV),
)
ENV_VALUE = st.one_of(
    st.text(max_size=10), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(ENV_KEY, ENV_VALUE, max_size=5))
def test_env_keys_are_shell_names_and_never_the_devices(env):
    inventory = {"groups": ONE_HOST["groups"], "hostvars": {"n1": dict(ONE_HOST["hostvars"]["n1"], pd_env=env)}}

    def good(key, value):
        return (
            SHELL.fullmatch(key) is not None
            and key not in OWNED_ENV
            and isinstance(value, (str, int, float, bool))
            and not CONTROL.search(str(value))
        )

    try:
        plan = build_plan(inventory)
    except PlanError as exc:
        assert not all(good(k, v) for k, v in env.items()), exc.problems
        assert all("\n" not in line and line.startswith("host n1: pd_env") for line in exc.problems)
        return
    assert all(good(k, v) for k, v in env.items())
    for inst in plan["instances"]:
        assert inst["env"]["ASCEND_RT_VISIBLE_DEVICES"] == ",".join(str(d) for d in inst["devices"])
        for key in env:
            assert key in inst["env"] and isinstance(inst["env"][key], str)


# Text an inventory can carry: any code point but lone surrogates (YAML and JSON cannot hold them).
INVENTORY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), INVENTORY_TEXT)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(INVENTORY_TEXT, st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(INVENTORY_TEXT, inner, max_size=3)), max_leaves=8), max_size=4))
def test_ucm_config_file_reads_back_as_written(extra):
    """pd_ucm_extra is merged into the UCM config file: whatever keys and values it holds, the
    file must be YAML that reads back to exactly that data."""
    yaml = pytest.importorskip("yaml")
    inventory = {
        "groups": {"prefill": ["n1"], "decode": ["n1"], "proxy": ["n1"]},
        "hostvars": {"n1": {"ansible_host": "10.0.0.1", "pd_platform": "ascend", "pd_connector": "ucm",
                            "pd_model": "/m", "pd_ucm_storage_backends": "/mnt/kv", "pd_ucm_extra": extra}},
    }
    plan = build_plan(inventory)
    for inst in plan["instances"]:
        (text,) = inst["files"].values()
        doc = yaml.safe_load(text)
        for key, value in extra.items():
            assert doc[key] == value


def _proxy_table():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "files/connector/openfuyao_pd/proxy/options.py"
    spec = importlib.util.spec_from_file_location("proxy_options_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


PROXY_TABLE = _proxy_table()
BAD_BY_KIND = {"choice": "nope", "bool": "maybe", "int": "x", "float": "x", "buckets": "[[2, 0], [1, 1]]"}


def _ini_default(opt) -> str:
    """The option's default as an INI inventory writes it (a string Ansible hands over as is)."""
    if opt.kind == "buckets":
        return str([list(b) for b in opt.default])
    return str(opt.default).lower() if opt.kind == "bool" else str(opt.default)


@pytest.mark.parametrize("opt", PROXY_TABLE.OPTIONS, ids=lambda o: o.name)
def test_every_proxy_option_is_refused_as_the_proxy_refuses_it(opt, tmp_path):
    """One schema: for every option of the proxy's table, the planner knows the name (no typo
    warning), refuses a bad value with the proxy's own message, and passes a good one on."""
    bad = BAD_BY_KIND[opt.kind]
    with pytest.raises(PROXY_TABLE.OptionError) as proxy_says:
        PROXY_TABLE.check(opt, ast.literal_eval(bad) if opt.kind == "buckets" else bad, f"pd_proxy_{opt.name}")
    assert problems_of(tmp_path, ini(f"pd_proxy_{opt.name}={bad}\n")) == [f"host n1: {proxy_says.value}"]
    good = plan_of(tmp_path, ini(f"pd_proxy_{opt.name}={_ini_default(opt)}\n"))
    PROXY_TABLE.check(opt, good["proxy"]["options"][opt.name])
    assert not any(f"pd_proxy_{opt.name}" in w for w in good["warnings"])


def test_group_typo_on_sixteen_hosts_is_one_warning(tmp_path):
    plan = plan_of(tmp_path, sixteen("pd_prefil_tp=2\n"))
    hosts = ", ".join([f"p{i:02d}" for i in range(1, 9)] + [f"d{i:02d}" for i in range(1, 9)])
    assert plan["warnings"] == [f"hosts {hosts}: unknown variable pd_prefil_tp ignored; did you mean pd_prefill_tp?"]
