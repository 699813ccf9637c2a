"""pd_service_probe: the parsers and joins with real inputs, and the module in process against a real HTTP server."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.module_utils import service_probe
from ansible_collections.openfuyao.pd.plugins.modules import pd_service_probe


def run(capsys, args: dict, check_mode: bool = False) -> dict:
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        pd_service_probe.main()
    return json.loads(capsys.readouterr().out)


def test_parse_supervisor_status() -> None:
    text = ("openfuyao-pd-decode-0           RUNNING   pid 4242, uptime 0:03:07\n"
            "openfuyao-pd-decode-1           STOPPED   Nov 22 03:31 AM\n"
            "openfuyao-pd-prefill-0          RUNNING   pid 77, uptime 2 days, 1:02:03\n"
            "openfuyao-pd-prefill-1          FATAL     Exited too quickly (process log may have details)\n")
    st = service_probe.parse_supervisor_status(text)
    assert st["openfuyao-pd-decode-0"] == {"state": "RUNNING", "pid": 4242, "uptime": "0:03:07", "detail": None}
    assert st["openfuyao-pd-decode-1"]["state"] == "STOPPED" and st["openfuyao-pd-decode-1"]["pid"] is None
    assert st["openfuyao-pd-prefill-0"]["uptime"] == "2 days, 1:02:03"
    assert st["openfuyao-pd-prefill-1"]["detail"].startswith("Exited too quickly")


def test_parse_systemctl_show() -> None:
    out = service_probe.parse_systemctl_show("ActiveState=active\nMainPID=991\nActiveEnterTimestamp=Sun 2026-11-22 03:00:00 UTC\n")
    assert out["state"] == "ACTIVE" and out["pid"] == 991 and out["uptime"].startswith("since Sun")
    assert service_probe.parse_systemctl_show("ActiveState=inactive\nMainPID=0\n")["pid"] is None
    # Digits str.isdigit() takes and int() refuses are unknown, not a crash.
    odd = service_probe.parse_systemctl_show("ActiveState=active\nMainPID=\u00b9\nNRestarts=\u0663\n")
    assert (odd["pid"], odd["restarts"]) == (None, None)


# Lines as supervisor 4.2's process.py and options.py write them.
SUPERVISORD_LOG = """\
2026-12-02 01:00:00,001 INFO supervisord started with pid 100
2026-12-02 01:00:01,002 INFO spawned: 'openfuyao-pd-decode-0' with pid 200
2026-12-02 01:01:00,003 WARN exited: openfuyao-pd-decode-0 (terminated by SIGKILL; not expected)
2026-12-02 01:01:05,004 INFO spawned: 'openfuyao-pd-decode-0' with pid 201
2026-12-02 01:02:00,005 WARN exited: openfuyao-pd-decode-0 (exit status 1; not expected)
2026-12-02 01:02:00,006 INFO exited: openfuyao-pd-proxy (exit status 0; expected)
2026-12-02 01:03:00,007 WARN exited: openfuyao-pd-decode-1 (exit status 75; not expected)
2026-12-02 01:03:00,008 INFO gave up: openfuyao-pd-decode-1 entered FATAL state, too many start retries too quickly
2026-12-02 01:04:00,009 WARN exited: openfuyao-pd-prefill-0 (terminated by SIGKILL; not expected)
2026-12-02 01:05:00,010 INFO stopped: openfuyao-pd-prefill-0 (terminated by SIGTERM)
"""


def test_parse_supervisord_log_counts_unexpected_exits_and_keeps_the_last_reason() -> None:
    out = service_probe.parse_supervisord_log(SUPERVISORD_LOG)
    assert out["openfuyao-pd-decode-0"] == {"restarts": 2, "last_exit": "exit status 1 at 2026-12-02 01:02:00"}
    assert out["openfuyao-pd-proxy"] == {"restarts": 0, "last_exit": "exit status 0 at 2026-12-02 01:02:00"}
    assert out["openfuyao-pd-decode-1"]["restarts"] == 1
    # a stop on purpose starts the count again; the reason of the last exit stays
    assert out["openfuyao-pd-prefill-0"] == {"restarts": 0, "last_exit": "terminated by SIGKILL at 2026-12-02 01:04:00"}
    # a new supervisord (a reboot) starts every count again
    again = service_probe.parse_supervisord_log(SUPERVISORD_LOG + "2026-12-02 02:00:00,000 INFO supervisord started with pid 9\n")
    assert again["openfuyao-pd-decode-0"]["restarts"] == 0


def test_parse_systemctl_show_restarts_and_crash_loop() -> None:
    out = service_probe.parse_systemctl_show("ActiveState=failed\nMainPID=0\nNRestarts=5\nResult=start-limit-hit\n"
                                       "ExecMainCode=2\nExecMainStatus=9\n")
    assert out["state"] == "FAILED" and out["restarts"] == 5 and out["last_exit"] == "killed by signal 9"
    assert out["detail"] == "result start-limit-hit"
    healthy = service_probe.parse_systemctl_show("ActiveState=active\nMainPID=5\nNRestarts=0\nResult=success\n"
                                           "ExecMainCode=0\nExecMainStatus=0\n")
    assert healthy["restarts"] == 0 and healthy["last_exit"] is None and healthy["detail"] is None



def test_supervisor_states_without_supervisord_names_the_reason():
    out = service_probe.supervisor_states(
        ["openfuyao-pd-decode-0"], 7, "", "unix:///run/openfuyao-pd/supervisor.sock no such file\n", "")
    assert out == {"openfuyao-pd-decode-0": {"state": "NO-SUPERVISOR", "pid": None, "uptime": None,
                                             "detail": "unix:///run/openfuyao-pd/supervisor.sock no such file"}}


def test_supervisor_states_joins_status_and_log_and_marks_absent_programs():
    status = "openfuyao-pd-decode-0           RUNNING   pid 201, uptime 0:03:07\n"
    # supervisorctl exits 3 when any program is not running: the parsed lines still count
    out = service_probe.supervisor_states(["openfuyao-pd-decode-0", "openfuyao-pd-decode-9"], 3, status, "",
                                          SUPERVISORD_LOG)
    assert out["openfuyao-pd-decode-0"] == {"state": "RUNNING", "pid": 201, "uptime": "0:03:07", "detail": None,
                                            "restarts": 2, "last_exit": "exit status 1 at 2026-12-02 01:02:00"}
    assert out["openfuyao-pd-decode-9"] == {"state": "ABSENT", "pid": None, "uptime": None, "detail": None,
                                            "restarts": 0, "last_exit": None}


def test_systemd_state_unknown_when_systemctl_fails():
    assert service_probe.systemd_state(1, "")["state"] == "UNKNOWN"
    assert service_probe.systemd_state(0, "ActiveState=active\nMainPID=5\n")["pid"] == 5


def test_instance_record_from_real_answers():
    inst = {"name": "decode-0", "service": "openfuyao-pd-decode-0", "health_url": "http://10.0.0.2:8200/health"}
    models = (200, {"object": "list", "data": [{"id": "qwen", "object": "model"}]}, None)
    rec = service_probe.instance_record(inst, (200, None, None), models, (200, {"version": "0.11.0"}, None),
                                        {"state": "RUNNING", "pid": 4}, {"decode-0": {"stuck": True, "kv_usage": 0.9}})
    assert rec == {"name": "decode-0", "health": "ok", "models": ["qwen"], "version": "0.11.0", "state": "RUNNING",
                   "pid": 4, "kv_stuck": True, "kv_usage": 0.9}
    down = service_probe.instance_record(inst, (None, None, "[Errno 111] Connection refused"), (None, None, "x"),
                                         (503, None, "HTTP 503"), {}, {})
    assert (down["health"], down["models"], down["version"], down["kv_stuck"]) == (
        "[Errno 111] Connection refused", [], None, False)
    assert service_probe.instance_record(inst, (503, None, None), (200, ["odd"], None), (200, "text", None), {}, {})[
        "health"] == "HTTP 503"


@pytest.mark.parametrize(("text", "expected"), [
    ('{"instances": {"decode-0": {"stuck": true}}}', {"decode-0": {"stuck": True}}),
    ("{not json", {}), ("[]", {}), ('{"instances": []}', {}), ("", {}), (None, {})])
def test_watchdog_instances(text, expected):
    assert service_probe.watchdog_instances(text) == expected


def test_parse_package_versions():
    assert service_probe.parse_package_versions(0, '{"vllm": "0.11.0", "torch": "2.7.1"}\n') == {
        "vllm": "0.11.0", "torch": "2.7.1"}
    assert service_probe.parse_package_versions(1, '{"vllm": "0.11.0"}') == {}
    assert service_probe.parse_package_versions(0, "Traceback ...") == {}


def test_api_base():
    assert service_probe.api_base("http://[fd00::2]:8200/health") == "http://[fd00::2]:8200"


def test_supervisord_without_conf_fails_naming_the_option_and_fix(capsys):
    res = run(capsys, {"services": ["openfuyao-pd-proxy"]})
    assert res["failed"] is True
    assert res["msg"] == ("supervisor_conf is required with manager=supervisord when instances or services are given; "
                          "set it to the supervisord.conf the services run under")


def test_health_url_without_health_fails(capsys):
    res = run(capsys, {"manager": "systemd",
                       "instances": [{"name": "decode-0", "service": "s", "health_url": "http://10.0.0.2:8200/"}]})
    assert res["msg"] == ("instances[0] (decode-0): health_url 'http://10.0.0.2:8200/' does not end in /health; "
                          "give the instance's health URL, for example http://10.0.0.2:8100/health")


def test_bad_http_timeout_fails(capsys):
    assert run(capsys, {"http_timeout": 0})["msg"] == (
        "http_timeout must be at least 1 (seconds), got 0; give the seconds one /health request may take")


VLLM_ANSWERS = {"/health": (200, b""), "/v1/models": (200, b'{"data": [{"id": "qwen"}]}'),
                "/version": (200, b'{"version": "0.11.0"}')}


class _Vllm(BaseHTTPRequestHandler):

    def do_GET(self):
        code, body = VLLM_ANSWERS.get(self.path, (404, b""))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def vllm_server():
    server = HTTPServer(("127.0.0.1", 0), _Vllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("check_mode", [False, True])
def test_module_probes_a_live_instance_and_a_dead_one(capsys, tmp_path: Path, vllm_server, monkeypatch, check_mode):
    monkeypatch.setenv("PATH", str(tmp_path))  # no supervisorctl: the services are reported, not failed
    state = tmp_path / "watchdog.json"
    state.write_text(json.dumps({"instances": {"decode-0": {"stuck": True, "kv_usage": 0.9}}}))
    res = run(capsys, {
        "supervisor_conf": str(tmp_path / "supervisord.conf"),
        "watchdog_state": str(state),
        "venv": str(tmp_path / "no-venv"),
        "instances": [{"name": "decode-0", "service": "openfuyao-pd-decode-0", "health_url": vllm_server + "/health"},
                      {"name": "decode-1", "service": "openfuyao-pd-decode-1",
                       "health_url": "http://127.0.0.1:9/health"}],
        "services": ["openfuyao-pd-proxy"],
    }, check_mode=check_mode)
    assert res["changed"] is False and not res.get("failed")
    live, dead = res["instances"]
    assert (live["health"], live["models"], live["version"], live["kv_stuck"], live["kv_usage"]) == (
        "ok", ["qwen"], "0.11.0", True, 0.9)
    assert dead["health"] != "ok" and dead["models"] == [] and dead["kv_stuck"] is False
    assert live["state"] == dead["state"] == "NO-SUPERVISOR"
    assert res["services"]["openfuyao-pd-proxy"]["state"] == "NO-SUPERVISOR"
    assert res["packages"] == {}


def test_module_reads_package_versions_with_the_venv_python(capsys, tmp_path: Path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    res = run(capsys, {"venv": str(tmp_path)})
    assert res["instances"] == [] and res["services"] == {}
    assert isinstance(res["packages"], dict)
    assert set(res["packages"]) <= set(service_probe.STACK_PACKAGES)


def test_module_reads_the_named_packages_only(capsys, tmp_path: Path):
    """vllm_pd's install reads the versions of its own pins (package_names), present or not."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    res = run(capsys, {"venv": str(tmp_path), "package_names": ["pytest", "no-such-distribution"]},
              check_mode=True)
    # The python linked outside its venv sees the base installation's pytest: whichever, it is there.
    assert list(res["packages"]) == ["pytest"] and res["packages"]["pytest"]
    res = run(capsys, {"venv": str(tmp_path / "no-venv"), "package_names": ["pytest"]})
    assert res["packages"] == {}
