# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Pure parsers for ``hccn_tool`` output and ``/etc/hccn.conf`` (PRIVATE to this collection).

Every function takes the text a command printed and returns plain data, or raises
:class:`ParseError` naming the command and quoting an excerpt of what it got. No I/O here:
the module runs the tool, these functions only read text, so they are tested against
captured outputs byte for byte.

Formats (see docs/preflight.md): ``hccn_tool`` prints ``link status: UP``; ``-link_stat -g``
prints ``[devid N]`` prefixed lines with asctime() stamps, newest record first, and older
drivers omit the ``link down count`` line; ``-tls -g`` prints ``tls switch[0]`` (no
certificate at all means TLS is off); ``-ip -g`` prints ``ipaddr:``/``netmask:`` or nothing;
``-net_health -g`` prints ``net health status: X``; ``-ping`` ends with
``N packets transmitted, M received, L% packet loss`` and exits 1 on any loss.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
import time

HEALTHY_NET_STATES = ("Success", "Init")
_EXCERPT = 160


class ParseError(ValueError):
    """Output of an Ascend tool that does not have the expected shape."""

    def __init__(self, command: str, expected: str, output: str) -> None:
        self.command = command
        self.expected = expected
        self.output = output
        super().__init__(
            f"cannot parse the output of `{command}` (expected {expected}), got: {excerpt(output)}"
        )


def excerpt(text: str | None, limit: int = _EXCERPT) -> str:
    """A short, single-line, escaped quotation of tool output for error messages.

    ``repr`` escapes control characters, NULs and lone surrogates, so the excerpt is one
    line of valid UTF-8 whatever bytes the tool printed.
    """
    if text is None or not text.strip():
        return "(empty output)"
    head = text.strip()[: limit * 8]  # a 4 MB spew need not be split into lines to quote 160 characters
    flat = " | ".join(line.strip() for line in head.splitlines() if line.strip())
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return repr(flat)


_ASCII_INT = re.compile(r"[0-9]{1,12}", re.ASCII)


def ascii_int(text: str | None) -> int | None:
    """``"42"`` -> 42; anything else (signs, ``NA``, ``²``, Arabic-Indic digits, 50 digits) -> None.

    ``str.isdigit`` accepts characters ``int`` refuses, and ``int`` refuses over 4300
    digits: tool output is read with this instead, so neither can raise.
    """
    text = (text or "").strip()
    return int(text) if _ASCII_INT.fullmatch(text) else None


# ---------------------------------------------------------------- /etc/hccn.conf

_CONF_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*?)_([0-9]{1,6})\s*=\s*(.*?)\s*$", re.ASCII)


def parse_hccn_conf(text: str) -> dict[int, dict[str, str]]:
    """``address_0=1.2.3.4`` lines -> ``{0: {"address": "1.2.3.4", ...}}``.

    Comments, blank lines and keys without a numeric device suffix are ignored (the file
    is edited by hand as often as by tools).
    """
    devices: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _CONF_LINE.match(line)
        if not match:
            continue
        key, dev, value = match.group(1), int(match.group(2)), match.group(3)
        devices.setdefault(dev, {})[key] = value
    return devices


# ---------------------------------------------------------------- -link -g

_LINK = re.compile(r"^\s*link status\s*:\s*(UP|DOWN)\s*$", re.IGNORECASE | re.MULTILINE | re.ASCII)


def parse_link(output: str, command: str = "hccn_tool -link -g") -> str:
    """``link status: UP`` -> ``"UP"``."""
    match = _LINK.search(output or "")
    if not match:
        raise ParseError(command, "'link status: UP|DOWN'", output)
    return match.group(1).upper()


# ---------------------------------------------------------------- -link_stat -g

_PREFIX = r"^\s*(?:\[(?:devid|device)\s*\d+\])?\s*"
_STAMP = r"([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4})"
_FLAGS = re.MULTILINE | re.ASCII
_CURRENT = re.compile(_PREFIX + r"current time\s*:\s*" + _STAMP, _FLAGS)
_UP_COUNT = re.compile(_PREFIX + r"link up count\s*:\s*([0-9]{1,12})\s*$", _FLAGS)
_DOWN_COUNT = re.compile(_PREFIX + r"link down count\s*:\s*([0-9]{1,12})\s*$", _FLAGS)
_RECORDS_HDR = re.compile(_PREFIX + r"link change records\s*:", _FLAGS)
_RECORD = re.compile(_PREFIX + _STAMP + r"\s+LINK\s+(UP|DOWN)\s*$", _FLAGS)


def asctime_to_epoch(stamp: str) -> float:
    """``Sun Oct  5 10:13:51 2025`` (C asctime, device local time) -> seconds.

    Both ends of a comparison come from the same output, so the time zone cancels out;
    the stamp is read as UTC to stay independent of the controller's zone.

    Raises ValueError for a stamp that matches the shape but is no date (``Mon Oct 99``).
    """
    try:
        parsed = time.strptime(" ".join(stamp.split()), "%a %b %d %H:%M:%S %Y")
        return float(calendar.timegm(parsed))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{stamp!r} is not a date: {exc}") from None


def parse_link_stat(output: str, command: str = "hccn_tool -link_stat -g") -> dict:
    """Flap history of one port.

    Returns ``current_time``, ``up_count``, ``down_count`` (``None`` on old drivers that
    do not print it) and ``records`` (newest first, ``{"time", "state"}``).
    """
    text = output or ""
    up = _UP_COUNT.search(text)
    current = _CURRENT.search(text)
    if not up or not current or not _RECORDS_HDR.search(text):
        raise ParseError(command, "'current time', 'link up count' and 'link change records' lines", text)
    try:
        asctime_to_epoch(current.group(1))  # the clock every record is judged against must be a date
    except ValueError:
        raise ParseError(command, "a date in 'current time' (like 'Fri Sep  1 06:37:26 2023')",
                         current.group(0)) from None
    down = _DOWN_COUNT.search(text)
    records = [{"time": m.group(1), "state": m.group(2)} for m in _RECORD.finditer(text)]
    return {
        "current_time": current.group(1),
        "up_count": int(up.group(1)),
        "down_count": int(down.group(1)) if down else None,
        "records": records,
    }


_DEVID = re.compile(r"^\s*\[(?:devid|device)\s*([0-9]{1,6})\]", re.MULTILINE | re.ASCII)


def parse_link_stat_loop(output: str, command: str = "for i in ...; do hccn_tool -i $i -link_stat -g; done") -> dict:
    """The concatenated output of a loop over devices -> ``{device: parse_link_stat(...)}``.

    Every line carries its ``[devid N]`` prefix, which is what splits the blocks.
    """
    blocks: dict[int, list[str]] = {}
    for line in (output or "").splitlines():
        match = _DEVID.match(line)
        if match:
            blocks.setdefault(int(match.group(1)), []).append(line)
    if not blocks:
        raise ParseError(command, "'[devid N]' prefixed lines", output)
    return {dev: parse_link_stat("\n".join(lines), command) for dev, lines in sorted(blocks.items())}


def flap_summary(stat: dict, window: int) -> dict:
    """Judge a parsed ``-link_stat`` result.

    A port flaps when a ``LINK DOWN`` record lies within ``window`` seconds before the
    tool's own ``current time`` (device clock on both sides). Records whose stamp cannot
    be read count as recent: better a false alarm than a missed flap.
    """
    now = asctime_to_epoch(stat["current_time"])
    recent_downs = []
    for record in stat["records"]:
        if record["state"] != "DOWN":
            continue
        try:
            age = now - asctime_to_epoch(record["time"])
        except ValueError:
            age = 0  # unreadable stamp: counted as recent, see above
        if age <= window:
            recent_downs.append(record["time"])
    down_count = stat["down_count"]
    if down_count is None:  # old drivers: count the records instead
        down_count = sum(1 for r in stat["records"] if r["state"] == "DOWN")
    last = stat["records"][0] if stat["records"] else None
    return {
        "flapping": bool(recent_downs),
        "recent_down_records": recent_downs,
        "link_down_count": down_count,
        "last_change": f"{last['time']} {last['state']}" if last else None,
    }


# ---------------------------------------------------------------- -tls -g

_TLS_SWITCH = re.compile(r"tls switch\[([0-9]{1,9})\]")
_TLS_PRESET = re.compile(r"tls preconfigured\[([0-9]{1,9})\]")
_TLS_ALARM = re.compile(r"tls alarm time threshold\[([0-9]{1,9})\]")
_TLS_EXPIRY = re.compile(r"tls expiration status\[([0-9]{1,9})\]")
NO_CERT_MARKER = "No certificate found"


def parse_tls(output: str, stderr: str = "", command: str = "hccn_tool -tls -g") -> dict:
    """``tls switch[0]`` -> ``{"switch": 0, "certificate": True, ...}``.

    With no certificate on the device the tool prints nothing on stdout and ``No
    certificate found`` on stderr; Huawei treats that as TLS disabled, so do we.
    """
    text = output or ""
    match = _TLS_SWITCH.search(text)
    if not match:
        if NO_CERT_MARKER.lower() in ((stderr or "") + text).lower():
            return {"switch": 0, "certificate": False, "preconfigured": None, "alarm_days": None,
                    "expiration_status": None}
        raise ParseError(command, "'tls switch[N]'", text + (stderr or ""))
    preset = _TLS_PRESET.search(text)
    alarm = _TLS_ALARM.search(text)
    expiry = _TLS_EXPIRY.search(text)
    return {
        "switch": int(match.group(1)),
        "certificate": True,
        "preconfigured": int(preset.group(1)) if preset else None,
        "alarm_days": int(alarm.group(1)) if alarm else None,
        "expiration_status": int(expiry.group(1)) if expiry else None,
    }


SET_OK_MARKER = "Cmd executed successfully"


def parse_set_result(output: str, command: str) -> None:
    """A set command (``-tls -s enable 0``) prints ``Cmd executed successfully!``."""
    if SET_OK_MARKER.lower() not in (output or "").lower():
        raise ParseError(command, "'Cmd executed successfully!'", output)


# ---------------------------------------------------------------- -ip -g

_IPADDR = re.compile(r"^\s*ipaddr\s*:\s*(\S+)\s*$", re.MULTILINE | re.ASCII)
_NETMASK = re.compile(r"^\s*netmask\s*:\s*(\S+)\s*$", re.MULTILINE | re.ASCII)
NO_IP_MARKER = "no ip was preset"


def parse_ip(output: str, stderr: str = "", command: str = "hccn_tool -ip -g") -> dict | None:
    """``ipaddr:X`` / ``netmask:Y`` -> dict, ``None`` when the device has no IP.

    A device without IP prints nothing on stdout (and ``... no ip was preset there!`` on
    stderr); anything else that lacks ``ipaddr:`` is garbage.
    """
    text = output or ""
    addr = _IPADDR.search(text)
    if addr:
        mask = _NETMASK.search(text)
        if not _is_ipv4(addr.group(1)) or (mask and not _is_ipv4(mask.group(1))):
            raise ParseError(command, "'ipaddr:A.B.C.D' and 'netmask:A.B.C.D' with valid IPv4 addresses", text)
        return {"ipaddr": addr.group(1), "netmask": mask.group(1) if mask else None}
    if not text.strip():
        return None
    raise ParseError(command, "'ipaddr:A.B.C.D'", text + (stderr or ""))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- -net_health -g

# States are words (Success, Init, Fault, Socket fail, Receive timeout, ...); anything else is not a state.
_NET_HEALTH = re.compile(r"^\s*net health status\s*:\s*([A-Za-z][A-Za-z ()_-]{0,40}?)\s*$", re.MULTILINE | re.ASCII)


def parse_net_health(output: str, command: str = "hccn_tool -net_health -g") -> str:
    """``net health status: Success`` -> ``"Success"`` (also Init, Fault, Socket fail(ed), ...)."""
    match = _NET_HEALTH.search(output or "")
    if not match:
        raise ParseError(command, "'net health status: ...'", output)
    return match.group(1)


def net_health_ok(state: str) -> bool:
    """Init (no detect address configured yet) and Success are healthy, as npu-exporter has it."""
    return state in HEALTHY_NET_STATES


# ---------------------------------------------------------------- -ping -g

_PING_SUMMARY = re.compile(
    r"(?<![0-9])([0-9]{1,9})\s+packets? transmitted,\s*([0-9]{1,9})\s+received,\s*([0-9]{1,3}(?:\.[0-9]{1,6})?)%"
    r"\s*packets? loss", re.IGNORECASE | re.ASCII
)
_PING_OK = re.compile(r"^\s*recv seq=[0-9]+", re.MULTILINE | re.ASCII)
_PING_LOST = re.compile(r"^\s*(?:recv time out seq|.*Destination Host Unreachable|.*Message too long)",
                        re.MULTILINE | re.IGNORECASE | re.ASCII)
_PING_HEADER = re.compile(r"^\s*device\s+[0-9]+\s+PING\s+\S+", re.MULTILINE | re.ASCII)


def parse_ping(output: str, target: str, command: str = "hccn_tool -ping -g") -> dict:
    """RoCE ping of one target -> transmitted/received/loss_pct.

    The exit code is 1 on any loss, so it says nothing on its own; the summary line is
    authoritative. When a driver omits the summary, the per-packet lines are counted.
    """
    text = output or ""
    summary = _PING_SUMMARY.search(text)
    if summary:
        sent, got, loss = int(summary.group(1)), int(summary.group(2)), float(summary.group(3))
        if got > sent or loss > 100.0:
            raise ParseError(command, "a ping summary with received <= transmitted and loss <= 100%",
                             summary.group(0))
    elif _PING_HEADER.search(text):
        got = len(_PING_OK.findall(text))
        sent = got + len(_PING_LOST.findall(text))
        if sent == 0:
            raise ParseError(command, "'N packets transmitted, M received, L% packet loss'", text)
        loss = round(100.0 * (sent - got) / sent, 2)
    else:
        raise ParseError(command, "'N packets transmitted, M received, L% packet loss'", text)
    return {"target": target, "transmitted": sent, "received": got, "loss_pct": loss,
            "ok": sent > 0 and got == sent}


# ---------------------------------------------------------------- tool status lines

BUSY_MARKER = "hccn_tool is busy"


# ---------------------------------------------------------------- A3 and vendor-guide checks
#
# Formats (docs/preflight.md, "A3 checks"): ``-hccs_ping`` (A3 super-node mainboards only) prints
# ``device N PING IP`` and a blank line, then per packet a result line (``This pkt ping success!``,
# ``This pkt send fail!``, ``This pkt check recv msg fail!``, ``This pkt ping not start to send!``)
# and ``recv seq S, time = U.UUUus, L1 plane check result = 0xH`` plus a blank line, then
# ``T packets transmitted, R received, L.LL% packets loss`` and max/min/average/TP95 times in
# microseconds. Loss does not change the exit code. ``-vnic -g`` prints three ``vnic ...: `` lines
# (space after the colon), ``-netdetect -g`` ``netdetect addr: IP``, ``-gateway -g``
# ``default gateway:IP, Iface:ethN``, ``-lldp -g`` an lldptool-style TLV dump (empty = no neighbour).

NOT_SUPPORTED_MARKER = "not supported on this product"
NO_GATEWAY_MARKER = "no gateway was preset"

_HCCS_SUMMARY = re.compile(
    r"^\s*([0-9]{1,9}) packets? transmitted, ([0-9]{1,9}) received, ([0-9]{1,3}(?:\.[0-9]{1,6})?)% packets? loss\s*$",
    re.MULTILINE | re.ASCII)
_HCCS_HEADER = re.compile(r"^\s*device\s+[0-9]{1,6}\s+PING\s+(\S+)\s*$", re.MULTILINE | re.ASCII)
_HCCS_RESULT = re.compile(r"^\s*This pkt (ping success|send fail|check recv msg fail|ping not start to send)!\s*$",
                          re.MULTILINE | re.ASCII)
_HCCS_SEQ = re.compile(r"^\s*recv seq ([0-9]{1,9}), time = ([0-9]{1,15}\.[0-9]{3})us, L1 plane check result = "
                       r"(0x[0-9a-fA-F]{1,8})\s*$", re.MULTILINE | re.ASCII)
_HCCS_TIME = re.compile(r"^\s*(max|min|average|TP95) time ([0-9]{1,15}\.[0-9]{3})us\s*$", re.MULTILINE | re.ASCII)


def is_not_supported(output: str) -> bool:
    """``The command is not supported on this product.`` (exit 13): e.g. ``-hccs_ping`` on A2."""
    return NOT_SUPPORTED_MARKER in (output or "").lower()


def parse_hccs_ping(output: str, target: str, command: str = "hccn_tool -hccs_ping -g") -> dict:
    """A3 HCCS ping of one vNIC address -> transmitted/received/loss_pct, per-packet results, times in us.

    The exit code is 0 whatever was lost, so only the text counts: the summary line, checked
    against the per-packet lines where the tool printed them (a summary that claims more
    packets received than lines say ``ping success`` is not believed).
    """
    text = output or ""
    header = _HCCS_HEADER.search(text)
    summary = _HCCS_SUMMARY.search(text)
    if not header or not summary:
        raise ParseError(command, "'device N PING IP' and 'T packets transmitted, R received, L% packets loss'", text)
    sent, got, loss = int(summary.group(1)), int(summary.group(2)), float(summary.group(3))
    if got > sent or loss > 100.0:
        raise ParseError(command, "a summary with received <= transmitted and loss <= 100%", summary.group(0))
    results = [m.group(1) for m in _HCCS_RESULT.finditer(text)]
    seqs = [(int(m.group(1)), float(m.group(2))) for m in _HCCS_SEQ.finditer(text)]
    if results or seqs:
        if len(results) != sent or len(seqs) != sent:
            raise ParseError(command, f"{sent} packet result(s) and 'recv seq' line(s) as the summary says",
                             text)
        if results.count("ping success") != got:
            raise ParseError(command, "as many 'This pkt ping success!' lines as packets received", text)
    times = {m.group(1).lower(): float(m.group(2)) for m in _HCCS_TIME.finditer(text)}
    packets = [{"seq": seq, "result": res, "time_us": t} for (seq, t), res in zip(seqs, results, strict=True)]
    return {"target": target, "transmitted": sent, "received": got, "loss_pct": loss,
            "ok": sent > 0 and got == sent, "packets": packets, "max_us": times.get("max"),
            "average_us": times.get("average"), "tp95_us": times.get("tp95")}


_VNIC_LINK = re.compile(r"^\s*vnic link status\s*:\s*(UP|DOWN)\s*$", re.MULTILINE | re.ASCII)
_VNIC_IP = re.compile(r"^\s*vnic ipaddr\s*:\s*(\S*)\s*$", re.MULTILINE | re.ASCII)
_VNIC_MASK = re.compile(r"^\s*vnic netmask\s*:\s*(\S*)\s*$", re.MULTILINE | re.ASCII)


def parse_vnic(output: str, command: str = "hccn_tool -vnic -g") -> dict:
    """``vnic link status: UP`` / ``vnic ipaddr: IP`` / ``vnic netmask: MASK`` -> dict (A3 HCCS vNIC)."""
    text = output or ""
    link, addr, mask = _VNIC_LINK.search(text), _VNIC_IP.search(text), _VNIC_MASK.search(text)
    if not link or not addr:
        raise ParseError(command, "'vnic link status: UP|DOWN' and 'vnic ipaddr: A.B.C.D'", text)
    if not _is_ipv4(addr.group(1)) or (mask and mask.group(1) and not _is_ipv4(mask.group(1))):
        raise ParseError(command, "'vnic ipaddr: A.B.C.D' and 'vnic netmask: A.B.C.D' with valid IPv4 addresses",
                         text)
    return {"link": link.group(1), "ipaddr": addr.group(1), "netmask": mask.group(1) if mask else None}


_NETDETECT = re.compile(r"^\s*netdetect addr(?:ess)?\s*:\s*(\S+)\s*$", re.MULTILINE | re.ASCII)


def parse_netdetect(output: str, command: str = "hccn_tool -netdetect -g") -> str | None:
    """``netdetect addr: IP`` -> the address, ``None`` when unset (``0.0.0.0``)."""
    match = _NETDETECT.search(output or "")
    if not match or not _is_ipv4(match.group(1)):
        raise ParseError(command, "'netdetect addr: A.B.C.D'", output)
    return None if match.group(1) == "0.0.0.0" else match.group(1)


_GATEWAY = re.compile(r"^\s*default gateway\s*:\s*([^,\s]+)\s*,\s*Iface\s*:\s*(\S+)\s*$", re.MULTILINE | re.ASCII)


def parse_gateway(output: str, stderr: str = "", command: str = "hccn_tool -gateway -g") -> dict | None:
    """``default gateway:IP, Iface:ethN`` -> dict, ``None`` when none is set (stderr ``no gateway was preset``)."""
    text = output or ""
    match = _GATEWAY.search(text)
    if match:
        if not _is_ipv4(match.group(1)):
            raise ParseError(command, "'default gateway:A.B.C.D, Iface:ethN' with a valid IPv4 address", text)
        return {"gateway": match.group(1), "iface": match.group(2)}
    if NO_GATEWAY_MARKER in ((stderr or "") + text).lower():
        return None
    raise ParseError(command, "'default gateway:A.B.C.D, Iface:ethN'", text + (stderr or ""))


_LLDP_HEADERS = {"Chassis ID TLV": "chassis_id", "Port ID TLV": "port_id", "System Name TLV": "system_name",
                 "System Description TLV": "system_description"}


def parse_lldp(output: str, command: str = "hccn_tool -lldp -g") -> dict | None:
    """lldptool-style TLV dump -> the neighbour's chassis/port/system fields; ``None`` for empty output.

    A TLV header stands on its own line and its value is the next indented line
    (``Port ID TLV`` then ``\\tIfname: 400GE1/1/5:1``); ``Ifname:`` lines alone (a grep of
    that dump) are accepted too.
    """
    text = output or ""
    if not text.strip():
        return None
    lines = text.splitlines()
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        key = _LLDP_HEADERS.get(line.strip())
        if key and index + 1 < len(lines) and lines[index + 1][:1] in ("\t", " ") and lines[index + 1].strip():
            found.setdefault(key, lines[index + 1].strip())
    ifnames = [m.group(1) for m in re.finditer(r"^\s*Ifname:\s*(\S+)\s*$", text, re.MULTILINE | re.ASCII)]
    if "port_id" not in found and not ifnames:
        raise ParseError(command, "an LLDP TLV dump with 'Port ID TLV' (or 'Ifname:' lines)", text)
    port = found.get("port_id", "")
    ifname = port.split(":", 1)[1].strip() if port.startswith("Ifname:") else (ifnames[0] if ifnames else None)
    return {"chassis_id": found.get("chassis_id"), "port_id": port or None, "ifname": ifname,
            "system_name": found.get("system_name"), "system_description": found.get("system_description")}
