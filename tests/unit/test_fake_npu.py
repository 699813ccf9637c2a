"""The fake tools print the real tools' bytes: they must reproduce every captured output exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parents[1] / "fakes"
CAPTURES = FAKES / "captures"
SCENARIOS = FAKES / "scenarios"


def run(tool: str, scenario: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FAKES / tool), *args], env={**os.environ, "PD_FAKE_NPU_SCENARIO": str(scenario)},
                          capture_output=True, text=True, check=False)


@pytest.fixture
def scenario(tmp_path):
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copy(SCENARIOS / name, dest)
        return dest
    return copy


@pytest.mark.parametrize(("name", "args", "fixture"), [
    ("a2_fixture.json", ["info"], "npu-smi_info.a2_910B4_24.1.rc3"),
    ("a3_fixture.json", ["info"], "npu-smi_info.a3_910C_24.1.rc3.3"),
    ("a2_fixture.json", ["info", "-m"], "npu-smi_info_-m.a2"),
    ("a3_fixture.json", ["info", "-m"], "npu-smi_info_-m.a3"),
    ("a2_fixture.json", ["info", "-l"], "npu-smi_info_-l.a2"),
    ("a3_fixture.json", ["info", "-l"], "npu-smi_info_-l.a3"),
])
def test_npu_smi_fake_is_byte_faithful(scenario, name, args, fixture):
    out = run("npu-smi", scenario(name), *args)
    assert out.returncode == 0
    assert out.stdout == (CAPTURES / fixture).read_text()


def test_hccn_tool_fake_link_stat_and_tls_are_byte_faithful(scenario):
    path = scenario("link_stat_fixture.json")
    assert run("hccn_tool", path, "-i", "2", "-link_stat", "-g").stdout == (
        CAPTURES / "hccn_tool_-link_stat_-g.flapping").read_text()
    tls = run("hccn_tool", path, "-i", "0", "-tls", "-g").stdout
    assert tls.splitlines()[0] + "\n" == (CAPTURES / "hccn_tool_-tls_-g.switch0").read_text()


def test_tls_set_persists_in_the_scenario(scenario):
    path = scenario("tls_on.json")
    assert "tls switch[1]" in run("hccn_tool", path, "-i", "5", "-tls", "-g").stdout
    out = run("hccn_tool", path, "-i", "5", "-tls", "-s", "enable", "0")
    assert (out.returncode, out.stdout) == (0, "Cmd executed successfully!\n")
    assert json.loads(path.read_text())["devices"]["5"]["tls"] == 0
    assert "tls switch[0]" in run("hccn_tool", path, "-i", "5", "-tls", "-g").stdout


def test_busy_answers_count_down(scenario):
    path = scenario("hccn_busy.json")
    for _attempt in range(3):
        out = run("hccn_tool", path, "-i", "0", "-link", "-g")
        assert (out.returncode, out.stdout) == (11, "hccn_tool is busy, please try again.\n")
    assert run("hccn_tool", path, "-i", "0", "-link", "-g").stdout == "link status: UP\n"


def test_error_shapes_of_the_real_tool(scenario):
    path = scenario("missing_ip.json")
    no_ip = run("hccn_tool", path, "-i", "6", "-ip", "-g")
    assert (no_ip.returncode, no_ip.stdout, no_ip.stderr) == (
        13, "", "Get ipconf failed, because no ip was preset there!\n")
    bad = run("hccn_tool", path, "-i", "9", "-link", "-g")
    assert (bad.returncode, bad.stderr) == (4, "Get invalid device id.\n")
    no_cert = run("hccn_tool", scenario("no_cert.json"), "-i", "0", "-tls", "-g")
    assert (no_cert.returncode, no_cert.stdout) == (14, "")
    assert "No certificate found" in no_cert.stderr
    loss = run("hccn_tool", scenario("ping_loss.json"), "-i", "4", "-ping", "-g", "address", "10.20.0.10")
    assert loss.returncode == 1 and loss.stderr == "Command execute failed!\n"
    assert loss.stdout.endswith("3 packets transmitted, 0 received, 100.00% packet loss\n")


def test_old_driver_has_no_down_count_and_a3_has_sixteen_devices(scenario):
    old = run("hccn_tool", scenario("old_driver.json"), "-i", "1", "-link_stat", "-g").stdout
    assert "link down count" not in old and "LINK DOWN" in old
    a3 = scenario("healthy_a3.json")
    assert run("hccn_tool", a3, "-i", "15", "-ip", "-g").stdout == "ipaddr:10.21.0.25\nnetmask:255.255.128.0\n"
    assert run("hccn_tool", a3, "-i", "16", "-ip", "-g").returncode == 4


def test_missing_scenario_is_one_clear_line(tmp_path):
    out = run("hccn_tool", tmp_path / "absent.json", "-i", "0", "-link", "-g")
    assert out.returncode == 2 and "no scenario file" in out.stderr and "Traceback" not in out.stderr
