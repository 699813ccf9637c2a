"""Summarise a `vllm bench serve` result file, compare it with a previous run, plot it.

    python -m openfuyao_pd.benchreport RESULT.json [--previous OLD.json] [--plot OUT.png] [--json]

The command line of the collection's bench report (plugins/module_utils/bench_report.py, which the
action openfuyao.pd.bench_report runs in playbooks/bench.yml). It runs on the controller from the
collection's tree (files/connector on PYTHONPATH), so it loads that file and the column aligner it
imports by their paths; the hosts that install this package never build the report.
Exit codes: 0 ok, 2 unusable input (one line on stderr saying which file and why).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_MODULE_UTILS = Path(__file__).resolve().parents[3] / "plugins" / "module_utils"
_PACKAGE = "ansible_collections.openfuyao.pd.plugins.module_utils"


def _load(name: str) -> ModuleType:
    """plugins/module_utils/NAME.py under its collection name (bench_report imports text_table by that name)."""
    full = f"{_PACKAGE}.{name}"
    if full not in sys.modules:
        path = _MODULE_UTILS / f"{name}.py"
        spec = importlib.util.spec_from_file_location(full, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise SystemExit(f"benchreport: {path} not found: run benchreport from the collection's tree")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]


_load("text_table")
bench_report = _load("bench_report")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchreport", description=__doc__.splitlines()[0])
    parser.add_argument("result", help="result JSON written by `vllm bench serve --save-result`")
    parser.add_argument("--previous", help="an earlier result JSON to compare against")
    parser.add_argument("--plot", help="write a PNG plot here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        doc = bench_report.report(args.result, args.previous, args.plot)
    except bench_report.BenchReportError as exc:
        print(f"benchreport: {exc}", file=sys.stderr)
        return 2
    if args.json:
        doc.pop("plot_written")
        print(json.dumps(doc, indent=2))
    else:
        print(doc["table"])
        if doc["plot"]:
            print(doc["plot"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
