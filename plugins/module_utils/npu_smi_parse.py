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

from ansible_collections.openfuyao.pd.plugins.module_utils.hccn_parse import ParseError, ascii_int

HEALTH_OK = "OK"
_VERSION = re.compile(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)")
_BUS_ID = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]$")
# A "used / total" pair; either side may be NA (npu-smi prints NA where the driver has no figure).
_PAIR = re.compile(r"([0-9]+|NA)\s*/\s*([0-9]+|NA)", re.ASCII)
_FLOAT = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?", re.ASCII)
_HEALTH = re.compile(r"[A-Za-z][A-Za-z _-]{0,23}", re.ASCII)  # OK, Warning, Alarm, Critical, UNKNOWN, NA ...
_NO_PROC = re.compile(r"No running processes found in NPU\s+([0-9]+)", re.IGNORECASE | re.ASCII)


def _cells(line: str) -> list[str] | None:
    stripped = line.strip()
    if not stripped.startswith("|") or set(stripped) <= set("+-=| "):
        return None
    return [cell.strip() for cell in stripped.strip("|").split("|")]


def _int_or_none(text: str) -> int | None:
    return ascii_int(text)


def _float_or_none(text: str) -> float | None:
    """Plain decimals only: ``float`` would also take ``nan``, ``inf`` and ``1e999``."""
    text = text.strip()
    return float(text) if _FLOAT.fullmatch(text) else None


def _usage(cell: str, hbm_column: bool) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """``0           0    / 0          22283/ 32768`` -> aicore, mem used/total, hbm used/total.

    910A-era tables have only one ``used / total`` pair (no HBM column); that pair is the
    device memory then, reported as HBM so callers see one figure. Where the header has an
    HBM column, a single pair is the memory one and the HBM figure is unknown (None): ``NA``
    HBM cells must never read as 0 MB used.
    """
    head = cell.split(None, 1)
    aicore = _int_or_none(head[0]) if head else None
    pairs = [(_int_or_none(a), _int_or_none(b)) for a, b in _PAIR.findall(head[1] if len(head) > 1 else "")]
    if len(pairs) >= 2:
        return aicore, pairs[0][0], pairs[0][1], pairs[-1][0], pairs[-1][1]
    if len(pairs) == 1 and hbm_column:
        return aicore, pairs[0][0], pairs[0][1], None, None
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
    hbm_column = False
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
        if first.startswith("Chip") and any("HBM-Usage" in c for c in cells):
            hbm_column = True
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
            aicore, _mu, _mt, hbm_used, hbm_total = _usage(cells[2], hbm_column)
            chip_id = _int_or_none(ids[0]) if ids else 0
            if chip_id is None:
                raise ParseError(command, "a numeric Chip id in the bus-id row", line)
            pending.update({
                "chip_id": chip_id,
                "phy_id": _int_or_none(ids[1]) if len(ids) > 1 else None,
                "bus_id": cells[1],
                "aicore_pct": aicore,
                "hbm_used_mb": hbm_used,
                "hbm_total_mb": hbm_total,
            })
            chips.append(pending)
            pending = None
            continue
        ids = first.split(None, 1)
        if not ids or _int_or_none(ids[0]) is None:
            continue
        power_temp = cells[2].split()
        if not _HEALTH.fullmatch(cells[1]):
            raise ParseError(command, "a word in the Health column (OK, Warning, Alarm, Critical, ...)", line)
        pending = {
            "npu_id": _int_or_none(ids[0]),
            "name": ids[1].strip() if len(ids) > 1 else "",
            "health": cells[1],
            "power_w": _float_or_none(power_temp[0]) if power_temp else None,
            "temp_c": _int_or_none(power_temp[1]) if len(power_temp) > 1 else None,
        }
    if not chips:
        raise ParseError(command, "an npu-smi table with at least one chip row", text)
    if proc_cols is None:  # npu-smi always ends with the process table: without it the output was cut short
        raise ParseError(command, "the whole table, process section included (output cut short?)",
                         "where it stops: " + text.rstrip().splitlines()[-1])
    _refuse_duplicates(chips, ("npu_id", "chip_id"), "NPU/Chip", command)
    if a3_layout:
        _refuse_duplicates(chips, ("phy_id",), "Phy-ID", command)
    return {"version": version, "a3_layout": a3_layout, "chips": chips, "processes": processes}


def _refuse_duplicates(rows: list[dict], keys: tuple[str, ...], label: str, command: str) -> None:
    """Two rows with the same id would give two instances one device: refuse the table."""
    seen: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(k) for k in keys)
        if None in key:
            continue
        if key in seen:
            ids = "/".join(str(k) for k in key)
            both = " and ".join(f"NPU {r['npu_id']} Chip {r['chip_id']}" for r in (seen[key], row))
            raise ParseError(command, f"each {label} once", f"{label} {ids} on both {both}")
        seen[key] = row


def _process_row(cells: list[str], cols: dict[str, int], line: str, command: str) -> dict:
    def col(prefix: str) -> str:
        for name, idx in cols.items():
            if name.startswith(prefix) and idx < len(cells):
                return cells[idx]
        return ""

    ids = cells[0].split()
    pid = _int_or_none(col("Process id"))
    memory = col("Process memory")
    npu_id = _int_or_none(ids[0]) if ids else None
    if npu_id is None or pid is None:
        raise ParseError(command, "process rows '| NPU Chip | pid | name | memory |'", line)
    chip_id = _int_or_none(ids[1]) if len(ids) > 1 else 0
    return {
        "npu_id": npu_id,
        "chip_id": chip_id if chip_id is not None else 0,
        "pid": pid,
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
        ids = [_int_or_none(p) for p in parts[:width]]
        if len(parts) < width or ids[0] is None or ids[1] is None:
            continue
        if parts[2] == "-":  # MCU
            continue
        if None in ids:
            raise ParseError(command, "numeric NPU/Chip/Logic ids", line)
        rows.append({
            "npu_id": ids[0],
            "chip_id": ids[1],
            "logic_id": ids[2],
            "phy_id": ids[3] if five else ids[0],
            "name": " ".join(parts[width:]),
        })
    if not rows:
        raise ParseError(command, "a 'NPU ID  Chip ID  Chip Logic ID ...' table", text)
    # A logic id twice would put two instances on one chip (and list it twice as free).
    _refuse_duplicates(rows, ("logic_id",), "Chip Logic ID", command)
    _refuse_duplicates(rows, ("npu_id", "chip_id"), "NPU ID/Chip ID", command)
    _refuse_duplicates(rows, ("phy_id",), "Chip Phy-ID" if five else "NPU ID", command)
    return rows


_LIST_TOTAL = re.compile(r"^\s*Total Count\s*:\s*([0-9]{1,6})\s*$", re.MULTILINE | re.ASCII)
_LIST_CARD = re.compile(r"^\s*NPU ID\s*:\s*([0-9]{1,6})\s*\n\s*Chip Count\s*:\s*([0-9]{1,6})\s*$",
                        re.MULTILINE | re.ASCII)


def parse_list(output: str, command: str = "npu-smi info -l") -> dict:
    """``npu-smi info -l`` -> ``{"total": 8, "cards": [{"npu_id": 0, "chip_count": 1}, ...]}``."""
    text = output or ""
    total = _LIST_TOTAL.search(text)
    if not total:
        raise ParseError(command, "'Total Count : N'", text)
    cards = [{"npu_id": int(a), "chip_count": int(b)} for a, b in _LIST_CARD.findall(text)]
    if len(cards) != int(total.group(1)):  # cut short, or a card listed twice: either way the list proves nothing
        raise ParseError(command, f"{total.group(1)} 'NPU ID : N' / 'Chip Count : N' entries as 'Total Count' says",
                         f"{len(cards)} entries")
    _refuse_duplicates([dict(c, chip_id=0) for c in cards], ("npu_id",), "NPU ID", command)
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
                busy_hbm_mb: int, command: str = "npu-smi info -m") -> list[dict]:
    """Join the ``info`` table, the ``-m`` mapping and hccn.conf into one record per chip.

    A chip is busy when a process runs on it or more HBM than ``busy_hbm_mb`` is in use
    (another container may hold it without being listed). With a mapping, every chip of
    the table must be in it: a made-up logic id would send an instance to the wrong chip.
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
        if mapping is not None and mapped is None:
            raise ParseError(command, f"a row for every chip of npu-smi info (NPU {key[0]} Chip {key[1]} is missing)",
                             "; ".join(f"NPU {m['npu_id']} Chip {m['chip_id']}: logic id {m['logic_id']}"
                                       for m in mapping))
        if mapped and chip["phy_id"] is not None and mapped["phy_id"] != chip["phy_id"]:
            raise ParseError(command, f"the Phy-ID npu-smi info shows for NPU {key[0]} Chip {key[1]}",
                             f"Phy-ID {mapped['phy_id']} here, {chip['phy_id']} in npu-smi info")
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
