"""The action openfuyao.pd.bench_report through Ansible itself: the summary as structured data, the plot
written (changed) or, in check mode, not; an unusable file or a bad argument is one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULT = {"num_prompts": 10, "duration": 11.5, "completed": 10, "failed": 0, "request_throughput": 0.87,
          "output_throughput": 55.6, "total_token_throughput": 278.2, "request_goodput": None,
          "p50_ttft_ms": 110.0, "p90_ttft_ms": 150.0, "p99_ttft_ms": 180.0,
          "p50_tpot_ms": 19.0, "p90_tpot_ms": 25.0, "p99_tpot_ms": 30.0}


def play(tmp_path: Path, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run the tasks on localhost; {task name: localhost's result}."""
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    doc = json.loads(proc.stdout)
    return {t["task"]["name"]: t["hosts"]["localhost"] for t in doc["plays"][0]["tasks"]}


def test_summary_plot_check_mode_and_failures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "cur.json").write_text(json.dumps(RESULT))
    (tmp_path / "prev.json").write_text(json.dumps(dict(RESULT, completed=5)))
    (tmp_path / "bad.json").write_text("{not json")
    report = {"result": "cur.json", "previous": "prev.json", "plot": str(tmp_path / "out" / "cur.png")}
    res = play(tmp_path, [
        {"name": "check", "openfuyao.pd.bench_report": report, "check_mode": True},
        {"name": "report", "openfuyao.pd.bench_report": report},
        {"name": "no plot", "openfuyao.pd.bench_report": {"result": str(tmp_path / "cur.json")}},
        {"name": "bad file", "openfuyao.pd.bench_report": {"result": "bad.json"}, "ignore_errors": True},
        {"name": "missing", "openfuyao.pd.bench_report": {"result": "gone.json"}, "ignore_errors": True},
        {"name": "no result", "openfuyao.pd.bench_report": {"plot": "x.png"}, "ignore_errors": True},
        {"name": "unknown option", "openfuyao.pd.bench_report": {"result": "cur.json", "prev": "prev.json"},
         "ignore_errors": True},
    ])
    check = res["check"]
    assert not check["changed"] and check["plot"] == f"check mode: the plot would be written to {tmp_path}/out/cur.png"
    done = res["report"]
    assert done["changed"] and done["plot"] == f"plot written to {tmp_path}/out/cur.png"
    assert (tmp_path / "out" / "cur.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert done["current"]["latency_ms"]["ttft"] == {"p50": 110.0, "p90": 150.0, "p99": 180.0}
    assert done["previous"]["completed"] == 5 and done["current"]["source"] == "cur.json"
    header, _rule, first = done["table"].splitlines()[:3]
    assert header.split() == ["metric", "this", "run", "previous", "change"]
    assert first.split()[2:4] == ["10", "5"]
    assert check["table"] == done["table"]
    assert "plot" not in res["no plot"] and not res["no plot"]["changed"]
    for name, why in (("bad file", "bad.json: not JSON (Expecting property name enclosed in double quotes at line 1)"),
                      ("missing", "gone.json: no such file; run playbooks/bench.yml first or fix the path"),
                      ("no result", "bench_report: missing required arguments: result"),
                      ("unknown option", "Invalid options for openfuyao.pd.bench_report: prev")):
        assert res[name]["failed"] and res[name]["msg"].startswith(why), res[name]
        assert "\n" not in res[name]["msg"] and "Traceback" not in json.dumps(res[name])
