"""File and process snapshots of a test deployment, compared before/after a --check run."""

from __future__ import annotations

import hashlib
from pathlib import Path

# What a run may legitimately add or touch without changing the deployment: logs, the shared KV
# blocks a verify request fills (a cache), the controller-side preflight report (the check's own
# output) and the per-playbook ansible logs the test helper writes; and what the running KV
# watchdog rewrites every interval (its state and metrics files), which no playbook writes.
VOLATILE = ("log", "data/kv")
VOLATILE_NAMES = ("pd_preflight_report.json", "watchdog.json", "watchdog.prom")


def _volatile(rel: Path) -> bool:
    text = rel.as_posix()
    return (any(text == v or text.startswith(v + "/") for v in VOLATILE) or rel.name in VOLATILE_NAMES
            or rel.suffix in (".log", ".stop") or rel.name.endswith(".load.json") or "__pycache__" in rel.parts)


def file_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under `root` (the deployment's config, state, supervisor, data and venv markers)
    mapped to (mode, mtime_ns, sha256 of the content): an edit, a touch or a chmod all show.

    The venv is taken down to its top-level files and bin/ (the entry points and the installed
    package's digest marker), not every installed file."""
    out: dict[str, tuple[int, int, str]] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if _volatile(rel):
            continue
        if rel.parts[0] == "venv" and len(rel.parts) > 2 and rel.parts[1] != "bin":
            continue
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        # A folder's mtime moves with any entry added, removed or renamed in it, the volatile ones
        # included (the watchdog replaces its files by rename); a real change shows as that entry.
        mtime = 0 if path.is_dir() and not path.is_symlink() else st.st_mtime_ns
        out[rel.as_posix()] = (st.st_mode, mtime, digest)
    return out


def diff(before: dict[str, tuple[int, int, str]], after: dict[str, tuple[int, int, str]]) -> list[str]:
    """One line per path added, removed or changed, for an assertion message."""
    lines = [f"+ {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"- {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines
