# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""Controller side of openfuyao.pd.pd_plan: inventory -> validated plan (no host is touched)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping

from ansible.errors import AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import (
    PlanError,
    build_plan,
    group_problems,
    render_table,
)
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_checks import collapse
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_file import (
    PlanFileError,
    check_plan,
    diff_plans,
    diff_warning,
    load_plan_file,
)
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_vars import DIR_VAR_NAMES

GROUPS = ("prefill", "decode", "proxy", "mooncake_master", "storage")
# Besides pd_*, the planner reads these per host.
# mooncake_version: the mooncake role's own pin, which sizes the Ascend Direct port pools when
# pd_mooncake_version is unset.
PASSTHROUGH = ("ansible_host", "ansible_connection", "mooncake_version", *DIR_VAR_NAMES)


def _plain(value):
    """Strip Ansible's wrapper types so the plan is plain JSON-able data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return str(value)


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _origin(exc):
    """' from FILE:LINE' of the first exception in the chain that knows where it came from.

    A broken host_vars/group_vars file surfaces as a bare "YAML parsing failed" whose cause
    carries the file's origin; the operator needs the file, not only the parser's complaint.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        obj = getattr(exc, "obj", None)
        path = getattr(obj, "path", None)
        if isinstance(path, str) and path:
            line = getattr(obj, "line_num", None)
            return f" from {path}:{line}" if line else f" from {path}"
        exc = exc.__cause__ or exc.__context__
    return ""


def _plan_text(plan):
    """The file's bytes: what `to_nice_json(indent=2)` writes, plus a final newline."""
    return json.dumps(plan, indent=2, sort_keys=True, separators=(",", ": ")) + "\n"


def _write_plan(path, text, check_mode):
    """Write text to path (mode 0600, atomically) unless it holds it already; True if changed.

    Done here on the controller rather than by a copy task: the module round trip of copy
    took most of plan.yml's time on a 16-host inventory.
    """
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text and (os.stat(path).st_mode & 0o777) == 0o600:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    if check_mode:
        return True
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".pd_plan.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def _remove_stale(path, check_mode):
    """A plan file from an earlier run must not outlive a failed re-plan."""
    if path and not check_mode and os.path.lexists(path):
        os.unlink(path)
        return True
    return False


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("use_facts", "fail_on_warnings", "inventory_only", "output", "plan_file"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        opts = {}
        for name, default in (("use_facts", True), ("fail_on_warnings", False), ("inventory_only", False)):
            try:
                opts[name] = boolean(args.get(name, default), strict=True)
            except TypeError:
                result.update(
                    failed=True, msg=f"pd_plan: option {name} must be a boolean, got {args.get(name)!r}"
                )
                return result
        use_facts, fail_on_warnings = opts["use_facts"], opts["fail_on_warnings"]
        output = args.get("output")
        if output is not None and (not isinstance(output, str) or not os.path.isabs(output)):
            result.update(failed=True, msg=f"pd_plan: option output must be an absolute path, got {output!r}")
            return result
        plan_file = args.get("plan_file")
        if plan_file is not None and (not isinstance(plan_file, str) or not plan_file.strip()):
            result.update(
                failed=True,
                msg=f"pd_plan_file={plan_file!r} is not a path: give the JSON file that playbooks/plan.yml wrote",
            )
            return result
        if plan_file is not None and (output is not None or opts["inventory_only"]):
            result.update(failed=True, msg="pd_plan: option plan_file cannot be combined with output or inventory_only")
            return result
        check_mode = bool(self._task.check_mode)

        groups = task_vars.get("groups") or {}
        reviewed = None
        if plan_file is not None:
            # The reviewed file first: it is what will be applied, so its problems come first.
            try:
                reviewed = check_plan(
                    load_plan_file(os.path.abspath(os.path.expanduser(plan_file)), plan_file),
                    list(groups.get("all") or []),
                    plan_file,
                )
            except PlanFileError as exc:
                result.update(failed=True, msg=str(exc), problems=[str(exc)])
                return result
        all_hostvars = task_vars.get("hostvars") or {}
        inventory = {
            "groups": {g: list(groups.get(g) or []) for g in GROUPS},
            "all_groups": sorted(groups),
            # The implicit localhost is in no group: an inventory that did not parse has none.
            "all_hosts": list(groups.get("all") or []),
            "hostvars": {},
            "facts": {},
        }
        problems = []
        hosts = []
        for g in GROUPS:
            for h in inventory["groups"][g]:
                if h not in hosts:
                    hosts.append(h)
        for h in hosts:
            try:
                hv = all_hostvars.get(h)
            except AnsibleError as exc:
                problems.append(
                    f"host {h}: its variables cannot be loaded{_origin(exc)}: {_first_line(exc)}: fix that file"
                )
                continue
            if hv is None:
                continue
            collected = {}
            for key in list(hv.keys()):
                if not (key.startswith("pd_") or key in PASSTHROUGH) or key in ("pd_plan", "pd_plan_output"):
                    continue
                try:
                    collected[key] = _plain(hv[key])
                except (AnsibleError, TypeError, ValueError) as exc:
                    problems.append(f"host {h}: variable {key} cannot be templated: {_first_line(exc)}")
            inventory["hostvars"][h] = collected
            if use_facts:
                try:
                    facts = hv.get("ansible_facts") or {}
                    npu = facts.get("npu") if isinstance(facts, Mapping) else None
                except (AnsibleError, TypeError, ValueError):
                    npu = None
                if npu:
                    inventory["facts"][h] = _plain(npu)
        if opts["inventory_only"]:
            problems += group_problems(inventory)
        if problems:
            problems = collapse(problems)
            result.update(failed=True, msg="\n".join(problems), problems=problems)
            _remove_stale(output, check_mode)
            return result
        if opts["inventory_only"]:
            result.update(changed=False, msg="the inventory loads and has the prefill, decode and proxy groups")
            return result
        if reviewed is not None:
            return self._apply_reviewed(result, reviewed, plan_file, inventory)
        try:
            plan = build_plan(inventory)
        except PlanError as exc:
            result.update(
                failed=True, msg="\n".join(exc.problems), problems=exc.problems, warnings=exc.warnings
            )
            _remove_stale(output, check_mode)
            return result
        if plan["warnings"]:
            result["warnings"] = list(plan["warnings"])
            if fail_on_warnings:
                result.update(failed=True, msg="\n".join(plan["warnings"]), problems=plan["warnings"])
                _remove_stale(output, check_mode)
                return result
        changed = False
        if output is not None:
            try:
                changed = _write_plan(output, _plan_text(plan), check_mode)
            except OSError as exc:
                result.update(failed=True, msg=f"pd_plan: cannot write the plan to {output}: {exc.strerror}")
                return result
            result["output"] = output
        result.update(
            changed=changed,
            plan=plan,
            table=render_table(plan),
            ansible_facts={"pd_plan": plan},
        )
        return result

    @staticmethod
    def _apply_reviewed(result, reviewed, plan_file, inventory):
        """Publish the reviewed plan; warn, in one line, where the inventory now plans otherwise."""
        try:
            current = build_plan(inventory)
        except PlanError as exc:
            first = exc.problems[0] if exc.problems else "no plan"
            warning = (
                f"pd_plan_file={plan_file} is applied as reviewed, but the current inventory does not plan "
                f"({first}), so it could not be compared with it"
            )
            differences = None
        else:
            differences = diff_plans(reviewed, current)
            warning = diff_warning(plan_file, differences)
        if warning:
            result["warnings"] = [warning]
        try:
            table = render_table(reviewed)
        except (KeyError, TypeError, ValueError, AttributeError):
            # A field the table shows but no role needs, in an unexpected shape: no table then.
            table = [f"(no table: {plan_file} has fields in shapes the table does not read)"]
        result.update(
            changed=False,
            plan=reviewed,
            plan_file_differences=differences,
            table=table,
            ansible_facts={"pd_plan": reviewed},
        )
        return result
