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
