"""openfuyao.pd.mooncake_loopback: the check's JSON line read back into the result, every failure one line
(no venv, an engine that does not start, no output, a timeout), and the module's source travelling with
it through Ansible's own module packaging. The real transfer is tests/e2e/test_mooncake_role.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.module_utils import mooncake_loopback as loopback
from ansible_collections.openfuyao.pd.plugins.modules import mooncake_loopback

ROOT = Path(__file__).resolve().parents[2]
OK_LINE = '{"ok": true, "bytes": 64, "seconds": 0.001, "gbytes_per_s": 0.064, "why": ""}'


def run(capsys: pytest.CaptureFixture[str], args: dict, check_mode: bool = False) -> dict:
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        mooncake_loopback.main()
    return json.loads(capsys.readouterr().out)


def fake_venv(tmp_path: Path, body: str) -> Path:
    """A venv whose bin/python is a shell script: what the check prints, without Mooncake."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\n{body}\n")
    python.chmod(0o755)
    return tmp_path / "venv"


def engine_that_does_not_start(tmp_path: Path) -> Path:
    """A venv with the real python and a mooncake package whose engine refuses to initialize."""
    pkg = tmp_path / "site" / "mooncake"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("class TransferEngine:\n    def initialize(self, *args):\n        return -1\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


@pytest.mark.parametrize(("rc", "stdout", "stderr", "want"), [
    (0, "noise\n" + OK_LINE + "\n", "", json.loads(OK_LINE)),
    (0, '{"ok": false, "why": "register_memory failed on the receiver"}\n', "",
     {"ok": False, "why": "register_memory failed on the receiver"}),
    (0, '{"ok": true, "bytes": 1}\n', "", {"ok": True, "bytes": 1, "why": ""}),
    (1, "", "Traceback (most recent call last):\n  ...\nValueError: invalid literal for int()\n",
     {"ok": False, "why": "the check printed no result (exit 1): ValueError: invalid literal for int()"}),
    (-9, "", "", {"ok": False, "why": "the check printed no result (exit -9)"}),
    (0, "{not json\n", "", {"ok": False, "why": "the check printed no result (exit 0)"}),
    (0, '{"bytes": 1}\n', "", {"ok": False, "why": "the check printed no result (exit 0)"}),
])
def test_parse_output(rc: int, stdout: str, stderr: str, want: dict) -> None:
    assert loopback.parse_output(rc, stdout, stderr) == want


def test_a_passing_check_is_the_result_unchanged_also_in_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the script is handed the size as its last argument
    venv = fake_venv(tmp_path, 'echo "$2" > "$(dirname "$0")/size"; echo starting; echo \'' + OK_LINE + "'")
    for check_mode in (False, True):
        out = run(capsys, {"venv": str(venv), "size": 64}, check_mode)
        assert not out.get("failed") and out["changed"] is False
        assert {k: out[k] for k in ("ok", "bytes", "seconds", "gbytes_per_s", "why")} == json.loads(OK_LINE)
    assert (venv / "bin" / "size").read_text().strip() == "64"


def test_the_script_is_this_module_utils_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venv = fake_venv(tmp_path, 'cp "$1" "$(dirname "$0")/seen.py"; echo \'' + OK_LINE + "'")
    run(capsys, {"venv": str(venv), "size": 64})
    assert (venv / "bin" / "seen.py").read_text() == Path(loopback.__file__).read_text()


@pytest.mark.parametrize(("args", "why", "msg"), [
    ({"venv": "/nonexistent/venv"}, "no python at /nonexistent/venv/bin/python",
     "no python at /nonexistent/venv/bin/python: install the Mooncake transfer engine into /nonexistent/venv first"),
    ({"venv": "/nonexistent/venv", "size": 0}, "bad option size=0", "size must be at least 1, got 0"),
])
def test_bad_options_fail_with_one_line(capsys: pytest.CaptureFixture[str], args: dict, why: str, msg: str) -> None:
    out = run(capsys, args)
    assert out["failed"] and out["ok"] is False and out["why"] == why and out["msg"] == msg


def test_an_engine_that_does_not_start_fails_with_why(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    out = run(capsys, {"venv": str(engine_that_does_not_start(tmp_path)), "size": 64})
    why = "cannot start the transfer engine (RuntimeError: TransferEngine.initialize returned -1)"
    assert out["failed"] and out["ok"] is False and out["why"] == why
    assert out["msg"] == f"Mooncake loopback transfer failed ({why})"


def test_no_output_and_a_timeout_fail_with_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    venv = fake_venv(tmp_path, "echo 'ImportError: libibverbs.so.1: cannot open shared object file' >&2; exit 1")
    out = run(capsys, {"venv": str(venv)})
    assert out["why"] == ("the check printed no result (exit 1): "
                          "ImportError: libibverbs.so.1: cannot open shared object file")
    (venv / "bin" / "python").write_text("#!/bin/sh\nsleep 5\n")
    out = run(capsys, {"venv": str(venv), "timeout": 1})
    assert out["failed"] and out["why"].startswith("the check took longer than 1 s (timeout)")


def test_through_ansible_the_module_carries_the_script(tmp_path: Path) -> None:
    """Packaged by Ansible (the module_utils file inside the module's payload), the source still reaches the venv."""
    venv = engine_that_does_not_start(tmp_path)
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}",
                           "-m", "openfuyao.pd.mooncake_loopback", "-a", f"venv={venv} size=64"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    res = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert res["failed"] and res["why"] == "cannot start the transfer engine (RuntimeError: TransferEngine.initialize returned -1)"
