# Copyright: (c) 2026, openFuyao
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Proxy high availability for the planner: several [proxy] hosts and an optional virtual IP.

Pure functions over plain values; pd_plan.build_plan calls them with its problem collector.
Every proxy is a full proxy with the same backends. The virtual IP (``pd_proxy_vip``) is held
by one proxy host at a time through keepalived (VRRP); it is the address clients use.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_checks import uint_text
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_vars import SPECS

# Names that pd_proxy_* must not be mistaken for proxy options.
VIP_VARS = tuple(s.name for s in SPECS.values() if s.section == "ha")
# Linux interface names: at most 15 characters, no slash or white space.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
DEFAULT_ROUTER_ID = SPECS["proxy_vrrp_router_id"].default

SINGLE_PROXY_RISK = (
    "one proxy host: while the proxy process restarts, or its host is down or rebooting, no request "
    "is served however many engines are healthy; list two hosts under [proxy] and set pd_proxy_vip "
    "for a virtual IP that moves to a live proxy"
)

SEVERAL_NO_VIP_RISK = (
    "several proxies and no pd_proxy_vip: each proxy serves on its own address, so clients must know "
    "them all and move to another when one fails; set pd_proxy_vip for one address that moves"
)


def risk(proxy_count, vip):
    """What the proxy layout risks, in one line (None for several proxies behind a VIP)."""
    if proxy_count == 1:
        return SINGLE_PROXY_RISK
    return None if vip is not None else SEVERAL_NO_VIP_RISK


@dataclass(frozen=True)
class Vip:
    """The virtual IP in front of the proxies, as keepalived needs it."""

    address: str
    prefix: int
    interface: str
    router_id: int
    unicast: bool
    # Each proxy host's interface; `interface` is the first proxy host's.
    interfaces: dict[str, str]

    def as_dict(self, peers: list[dict]) -> dict:
        return {
            "address": self.address,
            "prefix": self.prefix,
            "interface": self.interface,
            "interfaces": dict(self.interfaces),
            "router_id": self.router_id,
            "unicast": self.unicast,
            # Priority order: the first [proxy] host is preferred when all start together.
            "peers": peers,
        }


def _same_everywhere(values: dict[str, object]) -> tuple[object, list[str]]:
    """The one value all proxy hosts agree on, or the hosts that disagree with the first."""
    items = list(values.items())
    first = items[0][1]
    return first, [h for h, v in items[1:] if v != first]


def parse_vip(ctx, proxy_hosts: list[str], addresses: dict[str, str], binds: dict[str, str], ports: dict[str, int]):
    """The Vip of pd_proxy_vip (None when unset); each mistake is one ctx.error line.

    addresses: every host of the deployment -> its address; binds/ports: per proxy host.
    """
    parsed = _vip_address(ctx, proxy_hosts, addresses)
    if parsed is None:
        return None
    text, ip = parsed
    max_prefix = 32 if ip.version == 4 else 128
    prefix = _group_setting(
        ctx, proxy_hosts, "proxy_vip_prefix", max_prefix, lambda v: _int_in(v, 1, max_prefix),
        f"must be an integer in 1..{max_prefix} (the prefix length of pd_proxy_vip={text})",
    )
    interfaces = _vip_interfaces(ctx, proxy_hosts, text)
    router_id = _group_setting(
        ctx, proxy_hosts, "proxy_vrrp_router_id", DEFAULT_ROUTER_ID, lambda v: _int_in(v, 1, 255),
        "must be an integer in 1..255 (the VRRP virtual router id, unique on the network)",
    )
    unicast = _group_setting(ctx, proxy_hosts, "proxy_vrrp_unicast", SPECS["proxy_vrrp_unicast"].default, _bool,
                             "must be true or false")
    _check_vip_proxies(ctx, proxy_hosts, text, binds, ports)
    # Two proxies on one address clash on the port (the planner's port check says so).
    if unicast:
        for h in proxy_hosts:
            if not _is_ip(addresses[h]):
                ctx.error(
                    f"host {h}: VRRP unicast peers need IP addresses, and {addresses[h]} is a name: set pd_address "
                    "to the host's IP address"
                )
    if None in (prefix, router_id, unicast, interfaces):
        return None
    return Vip(text, prefix, interfaces[proxy_hosts[0]], router_id, unicast, interfaces)


def _group_setting(ctx, proxy_hosts: list[str], name: str, default, parse, must: str):
    """A setting every proxy host must share (keepalived's VRRP instance is one for the group):
    its parsed value, or None after one line naming the hosts (values that differ) or the
    variable, its value and what it must be."""
    read = {h: ctx.raw(h, name, default=default) for h in proxy_hosts}
    value, differ = _same_everywhere({h: v for h, (v, _var) in read.items()})
    var = SPECS[name].var
    if differ:
        shown = ", ".join(f"{h}: {read[h][0]}" for h in proxy_hosts)
        ctx.error(f"{var} differs between the proxy hosts ({shown}): set one {var} for group proxy")
        return None
    parsed = parse(value)
    if parsed is None:
        ctx.error(f"proxy hosts {', '.join(proxy_hosts)}: {read[proxy_hosts[0]][1]}={value!r} {must}")
    return parsed


def _vip_address(
    ctx, proxy_hosts: list[str], addresses: dict[str, str]
) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """(text, ip) of a usable pd_proxy_vip; None when unset or wrong (a host already holding it is
    reported and still returned, so the settings after it are checked too)."""
    raw = {h: ctx.raw(h, "proxy_vip")[0] for h in proxy_hosts}
    value, differ = _same_everywhere(raw)
    if differ:
        ctx.error(
            "pd_proxy_vip differs between the proxy hosts ({}): set one pd_proxy_vip for group proxy".format(
                ", ".join(f"{h}: {raw[h]}" for h in proxy_hosts)
            )
        )
        return None
    if value in (None, ""):
        return None
    text = str(value).strip().strip("[]")
    if "/" in text:
        ctx.error(
            f"pd_proxy_vip={value!r} carries a prefix: give the address alone and the prefix in pd_proxy_vip_prefix"
        )
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ctx.error(f"pd_proxy_vip={value!r} is not an IP address: set a free address of the proxies' network")
        return None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        ctx.error(f"pd_proxy_vip={value!r} is a loopback, wildcard or multicast address: set a free unicast address of the proxies' network")
        return None
    taken = sorted(h for h, a in addresses.items() if _same_ip(a, ip))
    if taken:
        ctx.error(
            f"pd_proxy_vip={text} is the address of host {', '.join(taken)}: the virtual IP must be a free address, "
            "not one a host already has"
        )
    return text, ip


def _vip_interfaces(ctx, proxy_hosts: list[str], text: str) -> dict[str, str] | None:
    """Each proxy host's interface for the virtual IP (pd_nic_name stands in for
    pd_proxy_vip_interface); hosts may name different interfaces (eth0 on one, ens3 on another)."""
    found: dict[str, str] = {}
    for h in proxy_hosts:
        iface, var = ctx.raw(h, "proxy_vip_interface")
        if iface in (None, ""):
            iface, var = ctx.raw(h, "nic_name")
        if iface in (None, ""):
            ctx.error(
                f"host {h}: pd_proxy_vip={text} needs pd_proxy_vip_interface: the network interface of the proxy "
                "host that carries the virtual IP (e.g. eth0)"
            )
        elif not isinstance(iface, str) or not _IFNAME.match(iface):
            ctx.error(
                f"host {h}: {var}={iface!r} is not a network interface name (at most 15 letters, digits, '.', '-', '_')"
            )
        else:
            found[h] = iface
    return found if len(found) == len(proxy_hosts) else None


def _check_vip_proxies(ctx, proxy_hosts: list[str], text: str, binds: dict[str, str], ports: dict[str, int]) -> None:
    """Every proxy must answer on the VIP, on one port."""
    for h in proxy_hosts:
        if binds[h] not in ("0.0.0.0", "::"):
            ctx.error(
                f"host {h}: the proxy listens on {binds[h]} only, so it cannot answer on pd_proxy_vip={text}: "
                "set pd_proxy_bind_host=0.0.0.0 (or ::) on the proxy hosts"
            )
    _port, port_differ = _same_everywhere({h: ports[h] for h in proxy_hosts})
    if port_differ:
        ctx.error(
            "pd_proxy_port differs between the proxy hosts ({}): behind pd_proxy_vip every proxy listens on one "
            "port; set one pd_proxy_port for group proxy".format(", ".join(f"{h}: {ports[h]}" for h in proxy_hosts))
        )


def endpoint(vip, first_proxy):
    """Where clients, verify, bench and status send requests: the VIP, else the first proxy."""
    if vip is not None:
        return {"address": vip.address, "port": first_proxy["port"], "vip": True}
    return {"address": first_proxy["address"], "port": first_proxy["port"], "vip": False}


def _same_ip(address, ip):
    try:
        return ipaddress.ip_address(str(address).strip("[]")) == ip
    except ValueError:
        return False


def _is_ip(address):
    try:
        ipaddress.ip_address(str(address).strip("[]"))
        return True
    except ValueError:
        return False


def _int_in(value, lo, hi):
    number = uint_text(value)
    return number if number is not None and lo <= number <= hi else None


def _bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    return None
