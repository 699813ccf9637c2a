# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Pure parsers for ``npu-smi`` output (PRIVATE to this collection).

Column widths of ``npu-smi info`` drift across driver versions (the 2026 header is one
column wider, 26.x adds a column), so tables are read by splitting rows on ``|`` and
stripping cells, never by fixed offsets. Rows come in pairs per chip: the first carries
NPU id, name and health, the second chip id (and on A3 the Phy-ID), bus id and usage.
"""

from __future__ import annotations

import re

from ansible_collections.openfuyao.pd.plugins.module_utils.hccn_parse import ParseError

HEALTH_OK = "OK"
_VERSION = re.compile(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)")
_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]$")
_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")
_NO_PROC = re.compile(r"No running processes found in NPU\s+(\d+)", re.IGNORECASE)


def _cells(line: str) -> list[str] | None:
    stripped = line.strip()
    if not stripped.startswith("|") or set(stripped) <= set("+-=| "):
        return None
    return [cell.strip() for cell in stripped.strip("|").split("|")]


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _usage(cell: str) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """``0           0    / 0          22283/ 32768`` -> aicore, mem used/total, hbm used/total.

    910A-era tables have only one ``used / total`` pair (no HBM column); that pair is the
    device memory then, reported as HBM so callers see one figure.
    """
    head = cell.split(None, 1)
    aicore = _int_or_none(head[0]) if head else None
    pairs = [(int(a), int(b)) for a, b in _PAIR.findall(head[1] if len(head) > 1 else "")]
    if len(pairs) >= 2:
        return aicore, pairs[0][0], pairs[0][1], pairs[-1][0], pairs[-1][1]
    if len(pairs) == 1:
        return aicore, None, None, pairs[0][0], pairs[0][1]
    return aicore, None, None, None, None


def parse_info(output: str, command: str = "npu-smi info") -> dict:
    """The ``npu-smi info`` table -> version, layout, chips and processes.

    Returns ``{"version", "a3_layout", "chips": [...], "processes": [...]}``. Each chip has
    npu_id, chip_id, phy_id (``None`` on A2 tables, where Phy-ID is not printed), name,
    health, bus_id, power_w, temp_c, aicore_pct, hbm_used_mb, hbm_total_mb.
    """
    text = output or ""
    version = None
    a3_layout = False
    chips: list[dict] = []
    processes: list[dict] = []
    proc_cols: dict[str, int] | None = None
    pending: dict | None = None
    for line in text.splitlines():
        match = _VERSION.search(line)
        if match and version is None:
            version = match.group(2)
            continue
        cells = _cells(line)
        if not cells:
            continue
        first = cells[0]
        if first.startswith("Chip") and "Phy-ID" in first:
            a3_layout = True
            continue
        if first.startswith(("NPU", "Chip")) and proc_cols is None:
            if any(c.startswith("Process id") for c in cells):
                proc_cols = {name: i for i, name in enumerate(cells)}
            continue
        if proc_cols is not None:
            if _NO_PROC.search(first):
                continue
            processes.append(_process_row(cells, proc_cols, line, command))
            continue
        if len(cells) < 3:
            continue
        if _BUS_ID.match(cells[1]):
            if pending is None:
                raise ParseError(command, "a chip row before its bus-id row", line)
            ids = first.split()
            aicore, _mu, _mt, hbm_used, hbm_total = _usage(cells[2])
            pending.update({
                "chip_id": int(ids[0]) if ids and ids[0].isdigit() else 0,
                "phy_id": int(ids[1]) if len(ids) > 1 and ids[1].isdigit() else None,
                "bus_id": cells[1],
                "aicore_pct": aicore,
                "hbm_used_mb": hbm_used,
                "hbm_total_mb": hbm_total,
            })
            chips.append(pending)
            pending = None
            continue
        ids = first.split(None, 1)
        if not ids or not ids[0].isdigit():
            continue
        power_temp = cells[2].split()
        pending = {
            "npu_id": int(ids[0]),
            "name": ids[1].strip() if len(ids) > 1 else "",
            "health": cells[1],
            "power_w": _float_or_none(power_temp[0]) if power_temp else None,
            "temp_c": _int_or_none(power_temp[1]) if len(power_temp) > 1 else None,
        }
    if not chips:
        raise ParseError(command, "an npu-smi table with at least one chip row", text)
    return {"version": version, "a3_layout": a3_layout, "chips": chips, "processes": processes}


def _process_row(cells: list[str], cols: dict[str, int], line: str, command: str) -> dict:
    def col(prefix: str) -> str:
        for name, idx in cols.items():
            if name.startswith(prefix) and idx < len(cells):
                return cells[idx]
        return ""

    ids = cells[0].split()
    pid = col("Process id")
    memory = col("Process memory")
    if len(ids) < 1 or not ids[0].isdigit() or not pid.isdigit():
        raise ParseError(command, "process rows '| NPU Chip | pid | name | memory |'", line)
    return {
        "npu_id": int(ids[0]),
        "chip_id": int(ids[1]) if len(ids) > 1 and ids[1].isdigit() else 0,
        "pid": int(pid),
        "name": col("Process name"),
        "memory_mb": _int_or_none(memory),
    }


def parse_mapping(output: str, command: str = "npu-smi info -m") -> list[dict]:
    """``npu-smi info -m`` -> ``[{"npu_id", "chip_id", "logic_id", "phy_id", "name"}]``.

    A2 prints four columns (NPU ID, Chip ID, Chip Logic ID, Chip Name), A3 five (adds Chip
    Phy-ID). MCU rows (logic id ``-``) are skipped. On A2 the physical id equals the NPU ID.
    """
    text = output or ""
    five = None
    rows: list[dict] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if "Chip Logic ID" in line:
            five = "Phy-ID" in line
            continue
        if five is None:
            continue
        parts = line.split()
        width = 4 if five else 3
        if len(parts) < width or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        if parts[2] == "-":  # MCU
            continue
        if not parts[2].isdigit() or (five and not parts[3].isdigit()):
            raise ParseError(command, "numeric NPU/Chip/Logic ids", line)
        npu_id = int(parts[0])
        rows.append({
            "npu_id": npu_id,
            "chip_id": int(parts[1]),
            "logic_id": int(parts[2]),
            "phy_id": int(parts[3]) if five else npu_id,
            "name": " ".join(parts[width:]),
        })
    if not rows:
        raise ParseError(command, "a 'NPU ID  Chip ID  Chip Logic ID ...' table", text)
    return rows


_LIST_TOTAL = re.compile(r"^\s*Total Count\s*:\s*(\d+)", re.MULTILINE)
_LIST_CARD = re.compile(r"^\s*NPU ID\s*:\s*(\d+)\s*\n\s*Chip Count\s*:\s*(\d+)", re.MULTILINE)


def parse_list(output: str, command: str = "npu-smi info -l") -> dict:
    """``npu-smi info -l`` -> ``{"total": 8, "cards": [{"npu_id": 0, "chip_count": 1}, ...]}``."""
    text = output or ""
    total = _LIST_TOTAL.search(text)
    if not total:
        raise ParseError(command, "'Total Count : N'", text)
    cards = [{"npu_id": int(a), "chip_count": int(b)} for a, b in _LIST_CARD.findall(text)]
    return {"total": int(total.group(1)), "cards": cards}


def product_of(info: dict) -> str:
    """A3 (two dies a card, Phy-ID column), A2 (910B), or ``other``."""
    names = {chip["name"] for chip in info["chips"]}
    if info["a3_layout"]:
        return "A3"
    if any(name.startswith("910B") or name.startswith("Ascend 910B") for name in names):
        return "A2"
    return "other"


def build_chips(info: dict, mapping: list[dict] | None, conf: dict[int, dict[str, str]],
                busy_hbm_mb: int) -> list[dict]:
    """Join the ``info`` table, the ``-m`` mapping and hccn.conf into one record per chip.

    A chip is busy when a process runs on it or more HBM than ``busy_hbm_mb`` is in use
    (another container may hold it without being listed).
    """
    by_card_chip = {(m["npu_id"], m["chip_id"]): m for m in mapping or []}
    procs: dict[tuple[int, int], list[dict]] = {}
    for proc in info["processes"]:
        procs.setdefault((proc["npu_id"], proc["chip_id"]), []).append(
            {"pid": proc["pid"], "name": proc["name"], "memory_mb": proc["memory_mb"]})
    result = []
    for index, chip in enumerate(info["chips"]):
        key = (chip["npu_id"], chip["chip_id"])
        mapped = by_card_chip.get(key)
        phy_id = chip["phy_id"] if chip["phy_id"] is not None else (
            mapped["phy_id"] if mapped else chip["npu_id"])
        logic_id = mapped["logic_id"] if mapped else index
        net = conf.get(phy_id, {})
        chip_procs = procs.get(key, [])
        hbm_used = chip["hbm_used_mb"]
        busy = bool(chip_procs) or (hbm_used is not None and hbm_used > busy_hbm_mb)
        result.append({
            "npu_id": chip["npu_id"],
            "chip_id": chip["chip_id"],
            "logic_id": logic_id,
            "phy_id": phy_id,
            "name": chip["name"],
            "health": chip["health"],
            "bus_id": chip["bus_id"],
            "aicore_pct": chip["aicore_pct"],
            "hbm_used_mb": hbm_used,
            "hbm_total_mb": chip["hbm_total_mb"],
            "processes": chip_procs,
            "device_ip": net.get("address"),
            "netmask": net.get("netmask"),
            "busy": busy,
        })
    return result
