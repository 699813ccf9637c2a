"""pd_tiny_model: the builder's result line becomes the task's result (changed as the builder
says), and a failing builder fails the task with its own one-line message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.modules import pd_tiny_model
from ansible_collections.openfuyao.pd.plugins.modules.pd_tiny_model import builder_result


def test_builder_result() -> None:
    line = '{"changed": true, "path": "/m", "seed": 7}\n'
    assert builder_result(0, line, "") == ({"changed": True, "path": "/m", "seed": 7}, None)
    assert builder_result(0, "noise\n" + line, "")[0]["changed"] is True
    assert builder_result(2, "", "warning\npd-tiny-model: torch is missing; run with the vLLM venv's python\n") == (
        None, "pd-tiny-model: torch is missing; run with the vLLM venv's python")
    assert builder_result(1, "", "")[1] == "the model builder exited with status 1 and said nothing"
    assert builder_result(0, "done\n", "")[1] == "the model builder printed no result line: 'done'"


def run(capsys, builder: Path, dest: Path) -> dict:
    args = {"python": sys.executable, "builder": str(builder), "dest": str(dest), "seed": 7}
    with patch_module_args(args), pytest.raises(SystemExit):
        pd_tiny_model.main()
    return json.loads(capsys.readouterr().out)


def test_module_reports_what_the_builder_did(capsys, tmp_path: Path) -> None:
    # A stand-in builder with the real one's command line and result line: builds once.
    builder = tmp_path / "tinymodel.py"
    builder.write_text(
        "import json, pathlib, sys\n"
        "dest, seed = pathlib.Path(sys.argv[1]), int(sys.argv[3])\n"
        "changed = not dest.exists()\n"
        "dest.mkdir(exist_ok=True)\n"
        "print(json.dumps({'changed': changed, 'path': str(dest), 'seed': seed}))\n")
    dest = tmp_path / "model"
    first = run(capsys, builder, dest)
    assert (first["changed"], first["path"], first["seed"]) == (True, str(dest), 7) and not first.get("failed")
    assert run(capsys, builder, dest)["changed"] is False


def test_module_fails_with_the_builders_message(capsys, tmp_path: Path) -> None:
    builder = tmp_path / "tinymodel.py"
    builder.write_text("import sys\nprint('pd-tiny-model: cannot write /m: Permission denied', file=sys.stderr)\n"
                       "sys.exit(1)\n")
    res = run(capsys, builder, tmp_path / "m")
    assert res["failed"] is True and res["rc"] == 1
    assert res["msg"] == f"building the model in {tmp_path / 'm'}: pd-tiny-model: cannot write /m: Permission denied"
