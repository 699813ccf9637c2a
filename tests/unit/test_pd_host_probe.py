"""pd_host_probe: the pure helpers with real inputs, and the module in process (binds real sockets)."""

from __future__ import annotations

import json
import socket

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.module_utils import host_probe
from ansible_collections.openfuyao.pd.plugins.modules import pd_host_probe

MOUNTS = (
    "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
    "/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n"
    "10.0.0.5:/models /mnt/model\\040store nfs4 rw,relatime,vers=4.1 0 0\n"
    "tmpfs /mnt/stack tmpfs rw 0 0\n"
    "dpc /mnt/stack dpc rw 0 0\n"
)


def run(capsys, args: dict, check_mode: bool = False) -> dict:
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        pd_host_probe.main()
    return json.loads(capsys.readouterr().out)


def test_find_mount_unescapes_and_normalises():
    assert host_probe.find_mount("/mnt/model store/", MOUNTS, True) == {
        "path": "/mnt/model store/", "exists": True, "mounted": True, "source": "10.0.0.5:/models", "fstype": "nfs4"}


def test_find_mount_last_stacked_mount_wins_and_parent_is_not_a_match():
    assert host_probe.find_mount("/mnt/stack", MOUNTS, True)["fstype"] == "dpc"
    assert host_probe.find_mount("/mnt", MOUNTS, False) == {
        "path": "/mnt", "exists": False, "mounted": False, "source": None, "fstype": None}


def test_nearest_existing_climbs_to_a_parent():
    existing = {"/", "/var", "/var/lib"}
    assert host_probe.nearest_existing("/var/lib/images/new", existing.__contains__) == "/var/lib"
    assert host_probe.nearest_existing("/nothing", set().__contains__) == "/"


def test_disk_report_rounds_to_one_decimal():
    assert host_probe.disk_report("/var/lib/x", "/var/lib", 120_449_000_000, 480_000_000_000) == {
        "path": "/var/lib/x", "checked_path": "/var/lib", "free_gb": 120.4, "total_gb": 480.0}


def test_ranges_to_check_skips_pools_and_puts_kindless_first():
    ranges = [{"start": 8100, "kind": "bind", "purpose": "http"}, {"start": 20000, "end": 20100, "kind": "pool"},
              {"start": 9000, "end": 9001, "purpose": "proxy", "kind": None}]
    assert [r["start"] for r in host_probe.ranges_to_check(ranges)] == [9000, 8100]


def test_ports_of_clamps_and_reversed_range_is_empty():
    assert list(host_probe.ports_of({"start": 65534, "end": 70000})) == [65534, 65535]
    assert list(host_probe.ports_of({"start": 0, "end": 1})) == [1]
    assert list(host_probe.ports_of({"start": 9000, "end": 8999})) == []
    assert list(host_probe.ports_of({"start": 8100, "end": None})) == [8100]


def test_range_report_keys_busy_ports_as_strings():
    assert host_probe.range_report({"start": 8100, "end": None, "purpose": None}, {8100: "in use"}) == {
        "start": 8100, "end": 8100, "purpose": "", "busy": {"8100": "in use"}}


def test_range_report_names_the_plan_claims_owner_and_variable():
    """A port claim of plan schema 2 (owner, use, var) passes unchanged; owner and var come back."""
    claim = {"start": 8200, "end": 8200, "purpose": "decode-0 http", "kind": None, "owner": "decode-0",
             "use": "http", "var": "pd_decode_http_port_base"}
    assert host_probe.range_report(claim, {}) == {
        "start": 8200, "end": 8200, "purpose": "decode-0 http", "busy": {}, "owner": "decode-0",
        "var": "pd_decode_http_port_base"}


@pytest.mark.parametrize(("errno_value", "ipv6", "wildcard", "reason"), [
    (98, False, True, "in use"), (98, True, True, "in use"), (99, True, True, None),
    (13, False, True, "Permission denied"),
    # Bound to one address the host does not have: the service would fail there too.
    (99, False, False, "not an address of this host"), (99, True, False, "not an address of this host")])
def test_bind_error_reason(errno_value, ipv6, wildcard, reason):
    assert host_probe.bind_error_reason(errno_value, "Permission denied", ipv6, wildcard) == reason


@pytest.mark.parametrize(("address", "targets"), [
    (None, [(False, "0.0.0.0"), (True, "::")]), ("", [(False, "0.0.0.0"), (True, "::")]),
    ("0.0.0.0", [(False, "0.0.0.0")]), ("::", [(True, "::")]), ("10.0.0.1", [(False, "10.0.0.1")]),
    ("fd00::1", [(True, "fd00::1")])])
def test_one_bind_rule_binds_what_the_service_binds(address, targets):
    assert host_probe.bind_targets(address) == targets


def test_busy_ports_flattens_the_ranges_in_order():
    reports = [host_probe.range_report({"start": 8100, "end": 8101, "purpose": "http", "owner": "decode-0",
                                        "address": "127.0.0.1"}, {8101: "in use"}),
               host_probe.range_report({"start": 9000, "purpose": "kv"}, {9000: "not an address of this host"})]
    assert host_probe.busy_ports(reports) == [
        {"port": 8101, "reason": "in use", "purpose": "http", "owner": "decode-0", "address": "127.0.0.1"},
        {"port": 9000, "reason": "not an address of this host", "purpose": "kv"}]


def test_engine_report():
    assert host_probe.engine_report("podman", None, None, "", "") == {
        "engine": "podman", "path": None, "ok": False, "detail": "podman not found on PATH"}
    down = host_probe.engine_report("docker", "/usr/bin/docker", 1, "Client: Docker Engine\n",
                                    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")
    assert down == {"engine": "docker", "path": "/usr/bin/docker", "ok": False,
                    "detail": "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."}
    assert host_probe.engine_report("docker", "/usr/bin/docker", 0, "Version: 27.1\n", "")["detail"] == ""


def test_relative_disk_path_fails_naming_the_option_and_fix(capsys):
    res = run(capsys, {"disk_path": "var/lib"})
    assert res["failed"] is True
    assert res["msg"] == "disk_path must be an absolute path, got 'var/lib'; give the full path, for example /var/lib"


def test_relative_storage_path_fails(capsys):
    res = run(capsys, {"storage_path": "./mnt"})
    assert res["msg"] == "storage_path must be an absolute path, got './mnt'; give the full path, for example /mnt"


def test_bad_command_timeout_fails(capsys):
    res = run(capsys, {"command_timeout": 0})
    assert res["msg"] == ("command_timeout must be at least 1 (seconds), got 0; "
                          "give the seconds docker/podman version may take")


@pytest.mark.parametrize("check_mode", [False, True])
def test_module_reports_busy_port_disk_and_mount(capsys, tmp_path, check_mode):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("0.0.0.0", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        res = run(capsys, {
            "storage_path": str(tmp_path),
            "disk_path": str(tmp_path / "not" / "yet"),
            "ports": [{"start": busy, "end": busy, "purpose": "http", "kind": "bind"},
                      {"start": busy, "end": busy, "purpose": "rpc pool", "kind": "pool"},
                      {"start": 70000, "end": 70000, "purpose": "out of range"}],
        }, check_mode=check_mode)
    finally:
        holder.close()
    assert res["changed"] is False and not res.get("failed")
    assert res["mount"] == {"path": str(tmp_path), "exists": True, "mounted": False, "source": None, "fstype": None}
    assert res["disk"]["checked_path"] == str(tmp_path) and res["disk"]["free_gb"] >= 0
    assert res["ports"] == [{"start": 70000, "end": 70000, "purpose": "out of range", "busy": {}},
                            {"start": busy, "end": busy, "purpose": "http", "busy": {str(busy): "in use"}}]
    assert res["busy"] == [{"port": busy, "reason": "in use", "purpose": "http"}]
    assert "engine" not in res


def test_module_binds_the_claims_address_as_the_service_will(capsys):
    """One address: busy there, free on another address, and an address the host lacks is named."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.2", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        res = run(capsys, {"ports": [
            {"start": port, "purpose": "http", "owner": "decode-0", "address": "127.0.0.2"},
            {"start": port, "purpose": "http", "owner": "decode-1", "address": "127.0.0.3"},
            {"start": port, "purpose": "http", "owner": "decode-2", "address": "192.0.2.77"}]})
    finally:
        holder.close()
    assert res["busy"] == [
        {"port": port, "reason": "in use", "purpose": "http", "owner": "decode-0", "address": "127.0.0.2"},
        {"port": port, "reason": "not an address of this host", "purpose": "http", "owner": "decode-2",
         "address": "192.0.2.77"}]


def test_module_reports_missing_engine(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(pd_host_probe.AnsibleModule, "get_bin_path", lambda self, name, *a, **kw: None)
    res = run(capsys, {"container_engine": "podman"})
    assert res["engine"] == {"engine": "podman", "path": None, "ok": False, "detail": "podman not found on PATH"}
    assert res["ports"] == [] and "mount" not in res and "disk" not in res
