"""The collection's filter plugins (plugins/filter): the list building the roles and playbooks used to do
in Jinja, as pure functions, plus one check that Ansible resolves them by their fully qualified names."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.filter.bind_port_probes import bind_port_probes
from ansible_collections.openfuyao.pd.plugins.filter.docker_run_options import docker_run_options
from ansible_collections.openfuyao.pd.plugins.filter.instance_files import instance_files
from ansible_collections.openfuyao.pd.plugins.filter.instance_probes import instance_probes
from ansible_collections.openfuyao.pd.plugins.filter.instance_services import instance_services
from ansible_collections.openfuyao.pd.plugins.filter.instance_wait_specs import instance_wait_specs
from ansible_collections.openfuyao.pd.plugins.filter.ports_out_of_range import ports_out_of_range
from ansible_collections.openfuyao.pd.plugins.filter.removed_backend_hosts import (
    host_address,
    removed_backend_hosts,
)
from ansible_collections.openfuyao.pd.plugins.filter.sim_serve_flags import sim_serve_flags
from ansible_collections.openfuyao.pd.plugins.filter.smallest_max_model_len import smallest_max_model_len
from ansible_collections.openfuyao.pd.plugins.filter.unwanted_programs import unwanted_programs
from ansible_collections.openfuyao.pd.plugins.filter.url_host import url_host
from ansible_collections.openfuyao.pd.plugins.filter.version_changes import version_changes
from ansible_collections.openfuyao.pd.plugins.filter.vrrp_pass_problem import vrrp_pass_problem
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
PREFILL = {"name": "prefill-0", "role": "prefill", "address": "10.0.0.1", "health_url": "http://10.0.0.1:8100/health",
           "ports": [{"start": 8100, "end": 8100, "purpose": "prefill-0 http"},
                     {"start": 20001, "end": 20003, "purpose": "prefill-0 kv", "kind": "bind"},
                     {"start": 50088, "end": 50088, "purpose": "mooncake master", "kind": "connect"}]}
DECODE = {"name": "decode-0", "role": "decode", "address": "10.0.0.1", "health_url": "http://[::1]:8200/health",
          "ports": [{"start": 8200, "end": 8200, "purpose": "decode-0 http"}],
          "files": {"/etc/ucm/ucm.yaml": "a: 1\n", "extra.json": "{}"}}


@pytest.mark.parametrize(("runtime", "script"), [("host", "run.sh"), ("container", "container.sh")])
def test_instance_services_one_per_instance(runtime: str, script: str) -> None:
    assert instance_services([PREFILL, DECODE], "openfuyao-pd-", "/etc/pd", "/var/log/pd", runtime) == [
        {"name": "openfuyao-pd-prefill-0", "command": f"/etc/pd/instances/prefill-0/{script}",
         "log": "/var/log/pd/prefill-0.log", "description": "openfuyao.pd prefill instance prefill-0"},
        {"name": "openfuyao-pd-decode-0", "command": f"/etc/pd/instances/decode-0/{script}",
         "log": "/var/log/pd/decode-0.log", "description": "openfuyao.pd decode instance decode-0"},
    ]


def test_instance_wait_specs_ask_for_health_and_models_under_one_base() -> None:
    alive = ["supervisorctl", "-c", "/etc/pd/supervisord.conf", "pid"]
    specs = instance_wait_specs([PREFILL, DECODE], "openfuyao-pd-", "/var/log/pd", alive)
    assert specs[1] == {"name": "decode-0", "urls": ["http://[::1]:8200/health", "http://[::1]:8200/v1/models"],
                        "log": "/var/log/pd/decode-0.log", "alive_cmd": [*alive, "openfuyao-pd-decode-0"]}
    assert specs[0]["urls"][1] == "http://10.0.0.1:8100/v1/models"
    assert alive == ["supervisorctl", "-c", "/etc/pd/supervisord.conf", "pid"], "the caller's argv is not changed"


def test_instance_files_absolute_keys_are_destinations_relative_ones_land_in_the_instance_dir() -> None:
    assert instance_files([PREFILL, DECODE], "/etc/pd") == [
        {"instance": "decode-0", "file": "/etc/ucm/ucm.yaml", "dest": "/etc/ucm/ucm.yaml", "content": "a: 1\n"},
        {"instance": "decode-0", "file": "extra.json", "dest": "/etc/pd/instances/decode-0/extra.json", "content": "{}"},
    ]
    assert instance_files([PREFILL, {**DECODE, "files": None}], "/etc/pd") == []


def test_bind_port_probes_claim_the_bind_ranges_of_instances_not_running() -> None:
    probes = bind_port_probes([PREFILL, DECODE], ["openfuyao-pd-decode-0"], "openfuyao-pd-")
    assert [(p["owner"], p["start"], p["end"], p["purpose"]) for p in probes] == [
        ("prefill-0", 8100, 8100, "prefill-0 http"), ("prefill-0", 20001, 20003, "prefill-0 kv")]
    assert {p["address"] for p in probes} == {"10.0.0.1"}
    assert bind_port_probes([PREFILL], ["openfuyao-pd-prefill-0"], "openfuyao-pd-") == []


def test_unwanted_programs_keep_wanted_services_only() -> None:
    files = [{"path": "/etc/pd/programs/openfuyao-pd-prefill-0.conf"}, {"path": "/etc/pd/programs/openfuyao-pd-proxy.conf"},
             {"path": "/etc/pd/programs/openfuyao-pd-decode-9.conf"}]
    assert unwanted_programs(files, ["openfuyao-pd-prefill-0", "openfuyao-pd-proxy"]) == [
        "/etc/pd/programs/openfuyao-pd-decode-9.conf"]
    assert unwanted_programs([], ["x"]) == []


@pytest.mark.parametrize(("port", "bad"), [
    ({"start": 8000}, False), ({"start": 1, "end": 65535}, False), ({"start": 0}, True),
    ({"start": 65000, "end": 65536}, True), ({"start": 80, "end": 70}, True), ({"start": 80, "end": "90"}, True),
    ({"start": "80"}, False),  # a non-numeric start is named by the preflight's own line
    ({"end": 80}, False),
])
def test_ports_out_of_range(port: dict, bad: bool) -> None:
    assert ports_out_of_range([port]) == ([port] if bad else [])


def test_version_changes_sorted_with_missing_sides_as_dash() -> None:
    before = {"vllm": "0.1", "torch": "2.0", "old": "1"}
    after = {"vllm": "0.2", "torch": "2.0", "new": "3"}
    assert version_changes(before, after) == ["new - -> 3", "old 1 -> -", "vllm 0.1 -> 0.2"]
    assert version_changes(before, before) == []


def test_smallest_max_model_len() -> None:
    assert smallest_max_model_len([{"argv": ["vllm", "serve", "m", "--max-model-len", "4096"]},
                                   {"argv": ["vllm", "serve", "m", "--max-model-len", "2000"]},
                                   {"argv": ["vllm", "serve", "m"]}]) == 2000
    assert smallest_max_model_len([{"argv": ["vllm", "serve", "m"]}]) == 0


def test_removed_backend_hosts_match_the_url_host_to_inventory_addresses() -> None:
    hostvars = {
        "node1": {"ansible_host": "10.0.0.1", "vllm_pd_conf_dir": "/srv/pd", "service_manager": "systemd"},
        "node2": {"ansible_host": "10.0.0.2"},
        "local": {"ansible_connection": "local"},
        "named": {"ansible_connection": "local", "pd_address": "10.0.0.9"},
    }
    # A planned host: the plan's address and conf dir (plans write loopback as 127.0.0.1).
    plan_hosts = {"node2": {"address": "127.0.0.1", "dirs": {"conf": "/srv/node2"}}}
    removed = [{"name": "decode-1", "url": "http://10.0.0.1:8200"}, {"name": "decode-2", "url": "http://127.0.0.1:8201"}]
    assert removed_backend_hosts(removed, list(hostvars), hostvars, plan_hosts) == [
        {"name": "decode-1", "host": "node1", "conf": "/srv/pd/supervisord.conf", "systemd": True},
        {"name": "decode-2", "host": "node2", "conf": "/srv/node2/supervisord.conf", "systemd": False},
        {"name": "decode-2", "host": "local", "conf": "/etc/openfuyao-pd/supervisord.conf", "systemd": False},
    ]
    # A host the plan no longer has gets the conf dir the planner would give it (its rule: no
    # trailing "/", a path that is not absolute is the default).
    for value, conf in (("/srv/pd/", "/srv/pd"), ("srv/pd", "/etc/openfuyao-pd")):
        hostvars["node1"]["vllm_pd_conf_dir"] = value
        assert removed_backend_hosts(removed[:1], ["node1"], hostvars, plan_hosts)[0]["conf"] == f"{conf}/supervisord.conf"
    assert host_address("named", hostvars["named"], plan_hosts) == "10.0.0.9"
    assert host_address("other", {}, plan_hosts) == "other"
    # Hosts the plan no longer has follow the planner's rule: localhost and ::1 are loopback, brackets go.
    assert host_address("old", {"ansible_host": "localhost"}, plan_hosts) == "127.0.0.1"
    assert host_address("old", {"ansible_host": "[fd00::7]"}, plan_hosts) == "fd00::7"


def test_instance_probes() -> None:
    assert instance_probes([PREFILL], "openfuyao-pd-") == [
        {"name": "prefill-0", "health_url": "http://10.0.0.1:8100/health", "service": "openfuyao-pd-prefill-0"}]


def test_docker_run_options_in_the_seeds_order() -> None:
    opts = docker_run_options(["/data:/data", "/etc/pd/instances/p:/etc/pd/instances/p:ro"], net="host", shm_size="500g",
                              privileged=True, workdir="/home", devices=["/dev/davinci_manager", "/dev/hisi_hdc"],
                              entrypoint="bash", extra=["--ulimit", "memlock=-1"])
    assert opts == ["--net=host", "--shm-size=500g", "--privileged=true", "-w", "/home",
                    "--device=/dev/davinci_manager", "--device=/dev/hisi_hdc", "--entrypoint=bash",
                    "-v", "/data:/data", "-v", "/etc/pd/instances/p:/etc/pd/instances/p:ro", "--ulimit", "memlock=-1"]
    plain = docker_run_options([], net="bridge", shm_size="1g", privileged=False, workdir="/", devices=[],
                               entrypoint="sh")
    assert plain == ["--net=bridge", "--shm-size=1g", "-w", "/", "--entrypoint=sh"]


@pytest.mark.parametrize(("argv", "flags"), [
    (["vllm", "serve", "./m", "--port", "8100"], ["./m", "--port", "8100"]),
    (["/opt/v/bin/vllm", "serve", "./m"], ["./m"]),
    (["python3", "-m", "vllm.entrypoints.openai.api_server", "--host", "h", "--model", "./m", "--port", "1"],
     ["./m", "--host", "h", "--port", "1"]),
])
def test_sim_serve_flags(argv: list[str], flags: list[str]) -> None:
    assert sim_serve_flags(argv) == flags


def test_ansible_resolves_the_filters_by_fqcn() -> None:
    """Through Ansible's own templating: the collection path of ansible.cfg finds every filter."""
    expr = ("{{ {'a': [[{'start': 0}] | openfuyao.pd.ports_out_of_range, "
            "{'x': '1'} | openfuyao.pd.version_changes({'x': '2'}), "
            "[{'argv': ['vllm', 'serve', 'm', '--max-model-len', '7']}] | openfuyao.pd.smallest_max_model_len], "
            "'u': ['fd00::1' | openfuyao.pd.url_host, '::' | openfuyao.pd.url_host('127.0.0.1')]} | to_json }}")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.debug",
                          "-a", f"msg={expr}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    msg = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    value = json.loads(msg) if isinstance(msg, str) else msg
    assert value == {"a": [[{"start": 0}], ["x 1 -> 2"], 7],
                     "u": ["[fd00::1]", "127.0.0.1"]}


@pytest.mark.parametrize(("host", "wildcard_host", "want"), [
    ("10.0.0.1", None, "10.0.0.1"), ("10.0.0.1", "127.0.0.1", "10.0.0.1"),
    ("node1", None, "node1"), ("node-1.example.com", None, "node-1.example.com"), ("node_1", None, "node_1"),
    ("fd00::1", None, "[fd00::1]"), ("::1", "127.0.0.1", "[::1]"), ("fe80::1%eth0", None, "[fe80::1%eth0]"),
    ("[fd00::1]", None, "[fd00::1]"), ("[fd00::1]", "127.0.0.1", "[fd00::1]"),
    # A wildcard bind address: kept in URL form without a replacement, else the replacement in URL form.
    ("0.0.0.0", None, "0.0.0.0"), ("::", None, "[::]"), ("[::]", None, "[::]"),
    ("0.0.0.0", "127.0.0.1", "127.0.0.1"), ("::", "127.0.0.1", "127.0.0.1"), ("[::]", "127.0.0.1", "127.0.0.1"),
    ("", "127.0.0.1", "127.0.0.1"), ("0.0.0.0", "::1", "[::1]"), ("::", "node1", "node1"),
    ("::", "[fd00::2]", "[fd00::2]"),
])
def test_url_host(host: str, wildcard_host: str | None, want: str) -> None:
    assert url_host(host, wildcard_host) == want


@pytest.mark.parametrize(("host", "wildcard_host", "why"), [
    (None, None, "None is not a host name or IP address (a string), got NoneType"),
    (8080, None, "8080 is not a host name or IP address (a string), got int"),
    (["fd00::1"], None, "['fd00::1'] is not a host name or IP address (a string), got list"),
    ("", None, "'' is empty: give a host name or IP address, or a wildcard_host to use in its place"),
    ("10.0.0.1:8000", None, "'10.0.0.1:8000' is not an IPv6 address (a host:port? give the host only)"),
    ("fd00::1::2", None, "'fd00::1::2' is not an IPv6 address (a host:port? give the host only)"),
    ("[10.0.0.1]", None, "'[10.0.0.1]' is not an IPv6 address in brackets ([fd00::1])"),
    ("[fd00::1", None, "'[fd00::1' is not an IPv6 address in brackets ([fd00::1])"),
    ("fd00::1]", None, "'fd00::1]' is not an IPv6 address in brackets ([fd00::1])"),
    ("[[fd00::1]]", None, "'[[fd00::1]]' is not an IPv6 address in brackets ([fd00::1])"),
    ("[fd00::1]:80", None, "'[fd00::1]:80' is not an IPv6 address in brackets ([fd00::1])"),
    ("node 1", None, "'node 1' is not an IP address or host name"),
    ("10.0.0.999", None, "'10.0.0.999' is not an IP address or host name"),
    ("http://node1", None, "'http://node1' is not an IPv6 address (a host:port? give the host only)"),
    ("node1/x", None, "'node1/x' is not an IP address or host name"),
    ("0.0.0.0", "::", "'::' cannot replace the wildcard address '0.0.0.0': it is a wildcard itself"),
    ("::", "", "'' cannot replace the wildcard address '::': it is a wildcard itself"),
    ("0.0.0.0", "10.0.0.1:80", "'10.0.0.1:80' is not an IPv6 address (a host:port? give the host only)"),
])
def test_url_host_refuses_bad_input_naming_the_value(host: object, wildcard_host: str | None, why: str) -> None:
    with pytest.raises(AnsibleFilterError) as err:
        url_host(host, wildcard_host)
    assert str(err.value) == f"url_host: {why}"


_HOST_NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True).filter(
    lambda h: not h.endswith("-") and "-." not in h)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.sampled_from([None, "127.0.0.1"]))
def test_url_host_any_ip_address_reads_back_from_a_url(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                                       wildcard_host: str | None) -> None:
    """What a URL's parser reads back as the host is the address itself (or the replacement of a wildcard)."""
    text = str(address)
    host = url_host(text, wildcard_host)
    assert url_host(host, wildcard_host) == host, "a host in URL form stays as it is"
    parsed = urlsplit(f"http://{host}:8000/health")
    assert parsed.port == 8000
    if wildcard_host is not None and text in ("0.0.0.0", "::"):
        assert host == wildcard_host
    else:
        assert ipaddress.ip_address(parsed.hostname) == address
        assert host == (f"[{text}]" if address.version == 6 else text)


@settings(max_examples=200, deadline=None)
@given(_HOST_NAMES)
def test_url_host_any_host_name_is_kept(name: str) -> None:
    assert url_host(name) == name
    assert urlsplit(f"http://{url_host(name)}:80/").hostname == name


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789abcdef:.[]% -/", max_size=40)),
       st.sampled_from([None, "127.0.0.1"]))
def test_url_host_any_text_gives_a_url_host_or_the_filter_error(text: str, wildcard_host: str | None) -> None:
    """No other exception escapes, and what comes back parses as the host of a URL."""
    try:
        host = url_host(text, wildcard_host)
    except AnsibleFilterError as err:
        assert repr(text) in str(err)
        return
    parsed = urlsplit(f"http://{host}:8000/")
    assert parsed.port == 8000
    assert parsed.hostname


@pytest.mark.parametrize(
    ("passwords", "want"),
    [
        ({"px1": "s3cret", "px2": "s3cret"}, ""),
        ({"px1": "s3cret", "px2": ""}, "hosts px2: pd_proxy_vip needs proxy_vrrp_auth_pass"),
        ({"px1": None}, "hosts px1: pd_proxy_vip needs proxy_vrrp_auth_pass"),
        ({"px1": "s3cret", "px2": "other"}, "hosts px1, px2: proxy_vrrp_auth_pass differs between the proxy hosts"),
        # keepalived reads 8 characters and the rest of a line after # or ! as a comment.
        ({"px1": "123456789"}, "hosts px1: proxy_vrrp_auth_pass must be 1-8 printable ASCII characters"),
        ({"px1": "ab#cd"}, "hosts px1: proxy_vrrp_auth_pass must be 1-8 printable ASCII characters"),
        ({"px1": "a b"}, "hosts px1: proxy_vrrp_auth_pass must be 1-8 printable ASCII characters"),
        ({"px1": "pässwd"}, "hosts px1: proxy_vrrp_auth_pass must be 1-8 printable ASCII characters"),
    ],
)
def test_vrrp_pass_problem_names_hosts_never_the_password(passwords: dict, want: str) -> None:
    line = vrrp_pass_problem(passwords)
    assert line.startswith(want) and (line == "") == (want == "")
    for value in passwords.values():
        assert not value or value not in line
