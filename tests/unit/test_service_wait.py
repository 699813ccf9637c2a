"""service_wait: the health-gate rule with fake probes and a fake clock (no time passes), and the module."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.module_utils.service_wait import MARK, last_start, wait_services
from ansible_collections.openfuyao.pd.plugins.modules import service_wait


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _svc(name, urls=None, alive_cmd=None):
    return {"name": name, "urls": urls or [f"http://{name}/health"], "log": f"/log/{name}", "alive_cmd": alive_cmd or []}


def _wait(services, up_after, alive=lambda cmd: True, timeout=60, grace=3):
    clock = Clock()
    start = clock.now

    def http_ok(url):
        return clock.now - start >= up_after.get(url, float("inf"))

    return wait_services(services, timeout, 5, grace, http_ok=http_ok, alive=alive,
                         read_tail=lambda path, n: [f"tail of {path}"], clock=clock, sleep=clock.sleep)


def test_all_ready_reports_seconds():
    out = _wait([_svc("a"), _svc("b")], {"http://a/health": 0, "http://b/health": 4})
    assert out == {"ok": True, "ready": {"a": 0.0, "b": 4.0}}


def test_every_url_must_answer():
    svc = _svc("a", urls=["http://a/health", "http://a/v1/models"])
    out = _wait([svc], {"http://a/health": 0, "http://a/v1/models": 6})
    assert out == {"ok": True, "ready": {"a": 6.0}}


def test_a_dead_service_fails_after_the_grace_with_its_log():
    out = _wait([_svc("a", alive_cmd=["check", "a"])], {}, alive=lambda cmd: cmd != ["check", "a"])
    assert out["ok"] is False and out["failed"] == "a" and out["why"] == "exited before serving"
    assert out["log"] == "/log/a" and out["tail"] == ["tail of /log/a"]


def test_timeout_names_the_late_service_and_its_urls():
    out = _wait([_svc("a"), _svc("b")], {"http://a/health": 0}, timeout=10)
    assert out["ok"] is False and out["failed"] == "b" and out["ready"] == {"a": 0.0}
    assert out["why"] == "not serving http://b/health after 10s"


@pytest.mark.parametrize(("lines", "count", "expected"), [
    (["x", "y", "z"], 2, ["y", "z"]),
    (["old", MARK + "a", "new1", "new2\n"], 10, [MARK + "a", "new1", "new2"]),
    ([MARK + "1", "a", MARK + "2", "b"], 10, [MARK + "2", "b"]),
    (["x"], 0, []),
])
def test_last_start(lines, count, expected):
    assert last_start(lines, count) == expected


def test_module_reports_a_missing_log(capsys, tmp_path):
    args = {"services": [{"name": "a", "urls": ["http://127.0.0.1:9/health"], "log": str(tmp_path / "none.log"),
                          "alive_cmd": ["false"]}], "timeout": 30, "grace": 0}
    with patch_module_args(args), pytest.raises(SystemExit):
        service_wait.main()
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["failed_service"] == "a" and out["changed"] is False
    assert out["why"] == "exited before serving" and out["tail"][0].startswith("(no log at ")
