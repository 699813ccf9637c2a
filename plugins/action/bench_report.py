# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Controller side of openfuyao.pd.bench_report: a fetched `vllm bench serve` result -> table, summary, plot."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.openfuyao.pd.plugins.module_utils.bench_report import BenchReportError, report

ARGUMENT_SPEC = {
    "result": {"type": "path", "required": True},
    "previous": {"type": "path"},
    "plot": {"type": "path"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        try:
            _validated, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        except AnsibleActionFail as exc:
            result.update(failed=True, msg=f"bench_report: {exc.message}")
            return result
        check_mode = bool(self._task.check_mode)
        try:
            doc = report(args["result"], args["previous"], args["plot"], check_mode=check_mode)
        except BenchReportError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        written = doc.pop("plot_written")
        if doc["plot"] is None:
            doc.pop("plot")
        result.update(changed=written, **doc)
        return result
