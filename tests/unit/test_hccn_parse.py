"""hccn_tool / hccn.conf parsers against captured outputs, with exact expected values."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils import hccn_parse as hp

CAPTURES = Path(__file__).resolve().parents[1] / "fakes" / "captures"


def capture(name: str) -> str:
    return (CAPTURES / name).read_text()


# ---------------------------------------------------------------- hccn.conf


def test_hccn_conf_a2_8_every_device_exactly():
    conf = hp.parse_hccn_conf(capture("hccn.conf.a2_8"))
    addresses = ["127.0.0.45", "127.0.0.226", "127.0.0.83", "127.0.0.190",
                 "127.0.0.208", "127.0.0.247", "127.0.0.118", "127.0.0.223"]
    assert sorted(conf) == list(range(8))
    for dev, addr in enumerate(addresses):
        assert conf[dev] == {"address": addr, "netmask": "255.255.0.0", "netdetect": "127.0.0.1",
                             "gateway": "127.0.0.1", "send_arp_status": "1", "tls_enable": "0"}


def test_hccn_conf_a3_16_every_device_and_die_pairs():
    conf = hp.parse_hccn_conf(capture("hccn.conf.a3_16"))
    assert sorted(conf) == list(range(16))
    assert conf[0] == {"address": "127.0.0.24", "netmask": "255.255.128.0", "gateway": "127.0.0.1",
                       "arp": "-i eth0 -s 127.0.0.114 bc:1e:85:d8:ca:dd", "netdetect": "127.0.0.1",
                       "send_arp_status": "1", "tls_enable": "0"}
    assert conf[15]["address"] == "127.0.0.94"
    assert conf[15]["arp"] == "-i eth15 -s 127.0.0.214 d8:76:ae:76:bd:d8"
    # the two dies of a card point their static ARP entries at each other
    for card in range(8):
        a, b = conf[2 * card], conf[2 * card + 1]
        assert a["arp"].split()[3] == b["address"] and b["arp"].split()[3] == a["address"]
    assert all(d["tls_enable"] == "0" and d["netmask"] == "255.255.128.0" for d in conf.values())


def test_hccn_conf_ignores_comments_blank_and_foreign_lines():
    conf = hp.parse_hccn_conf("# comment\n\naddress_3 = 10.0.0.3\nbogus line\nnetmask_3=255.255.255.0\nfoo=bar\n")
    assert conf == {3: {"address": "10.0.0.3", "netmask": "255.255.255.0"}}


# ---------------------------------------------------------------- -link -g


def test_link_up_and_down_lines():
    assert hp.parse_link("link status: UP\n") == "UP"
    assert hp.parse_link("link status: DOWN\n") == "DOWN"


# ---------------------------------------------------------------- -link_stat -g


def test_link_stat_flapping_capture_exact():
    stat = hp.parse_link_stat(capture("hccn_tool_-link_stat_-g.flapping"))
    assert stat == {
        "current_time": "Fri Sep  1 06:37:26 2023",
        "up_count": 2,
        "down_count": 2,
        "records": [
            {"time": "Fri Sep  1 06:34:43 2023", "state": "DOWN"},
            {"time": "Thu Aug 31 07:30:46 2023", "state": "UP"},
            {"time": "Thu Aug 31 07:30:44 2023", "state": "DOWN"},
            {"time": "Thu Aug 31 07:30:43 2023", "state": "UP"},
        ],
    }
    summary = hp.flap_summary(stat, 86400)
    assert summary == {"flapping": True,
                       "recent_down_records": ["Fri Sep  1 06:34:43 2023", "Thu Aug 31 07:30:44 2023"],
                       "link_down_count": 2, "last_change": "Fri Sep  1 06:34:43 2023 DOWN"}
    # 163 s between the newest LINK DOWN and the tool's current time
    assert hp.flap_summary(stat, 163)["recent_down_records"] == ["Fri Sep  1 06:34:43 2023"]
    assert hp.flap_summary(stat, 162)["flapping"] is False


CURRENT_DRIVER = """[devid 0]current time        : Tue Oct 28 21:46:46 2025
[devid 0]link up count       : 2
[devid 0]link down count     : 1
[devid 0]link change records :
[devid 0]    Sun Oct  5 10:13:51 2025    LINK UP
[devid 0]    Sun Oct  5 10:13:50 2025    LINK DOWN
[devid 0]    Sun Oct  5 10:13:35 2025    LINK UP
"""

# Older drivers print no 'link down count' line (format per the reference notes).
OLD_DRIVER = """[devid 4]current time        : Thu Jan  4 09:00:00 2024
[devid 4]link up count       : 3
[devid 4]link change records :
[devid 4]    Thu Jan  4 08:10:00 2024    LINK UP
[devid 4]    Thu Jan  4 08:09:58 2024    LINK DOWN
[devid 4]    Wed Jan  3 08:09:58 2024    LINK UP
[devid 4]    Wed Jan  3 08:09:50 2024    LINK DOWN
[devid 4]    Mon Jan  1 00:00:00 2024    LINK UP
"""


def test_link_stat_current_driver_old_flap_outside_window():
    stat = hp.parse_link_stat(CURRENT_DRIVER)
    assert (stat["up_count"], stat["down_count"], len(stat["records"])) == (2, 1, 3)
    summary = hp.flap_summary(stat, 86400)  # the flap was 23 days before 'current time'
    assert summary["flapping"] is False
    assert summary["link_down_count"] == 1
    assert summary["last_change"] == "Sun Oct  5 10:13:51 2025 UP"
    assert hp.flap_summary(stat, 30 * 86400)["flapping"] is True


def test_link_stat_old_driver_counts_down_records():
    stat = hp.parse_link_stat(OLD_DRIVER)
    assert stat["down_count"] is None
    summary = hp.flap_summary(stat, 3600)
    assert summary == {"flapping": True, "recent_down_records": ["Thu Jan  4 08:09:58 2024"],
                       "link_down_count": 2, "last_change": "Thu Jan  4 08:10:00 2024 UP"}


def test_link_stat_loop_over_devices_splits_by_prefix():
    loop = CURRENT_DRIVER + capture("hccn_tool_-link_stat_-g.flapping") + OLD_DRIVER
    stats = hp.parse_link_stat_loop(loop)
    assert sorted(stats) == [0, 2, 4]
    assert [len(stats[d]["records"]) for d in (0, 2, 4)] == [3, 4, 5]
    assert (stats[2]["down_count"], stats[4]["down_count"]) == (2, None)
    with pytest.raises(hp.ParseError):
        hp.parse_link_stat_loop("link status: UP\n")


def test_link_stat_no_records_and_device_prefix_variant():
    text = ("[device 3]current time        : Tue Oct 28 21:46:46 2025\n[device 3]link up count       : 0\n"
            "[device 3]link down count     : 0\n[device 3]link change records : NA\n")
    stat = hp.parse_link_stat(text)
    assert stat["records"] == [] and stat["up_count"] == 0
    assert hp.flap_summary(stat, 86400) == {"flapping": False, "recent_down_records": [], "link_down_count": 0,
                                            "last_change": None}


# ---------------------------------------------------------------- -tls -g


def test_tls_switch0_capture():
    assert hp.parse_tls(capture("hccn_tool_-tls_-g.switch0")) == {
        "switch": 0, "certificate": True, "preconfigured": 1, "alarm_days": 60, "expiration_status": None}


def test_tls_older_driver_full_output_and_switch_on():
    text = ("dev_id:1, tls switch[1](0:disable, 1:enable), tls alarm time threshold[60]days\n"
            "dev_id:1, [pub cert] info:\n\t issuer[/C=CN/ST=GD/O=HUAWEI/OU=2012/CN=2_1thCA]\n"
            "\t start_time[Wed Feb 19 03:19:21 2020 GMT]\n\t end_time[Sat Feb 16 03:19:21 2030 GMT]\n")
    assert hp.parse_tls(text) == {"switch": 1, "certificate": True, "preconfigured": None, "alarm_days": 60,
                                  "expiration_status": None}


def test_tls_no_certificate_means_off():
    got = hp.parse_tls("", "No certificate found, please set certs firstly!\n")
    assert got["switch"] == 0 and got["certificate"] is False


# ---------------------------------------------------------------- -ip -g / -net_health -g / -ping


def test_ip_present_and_missing():
    assert hp.parse_ip("ipaddr:11.12.165.80\nnetmask:255.255.255.0\n") == {
        "ipaddr": "11.12.165.80", "netmask": "255.255.255.0"}
    assert hp.parse_ip("", "Get ipconf failed, because no ip was preset there!\n") is None
    assert hp.parse_ip("\n\n") is None


@pytest.mark.parametrize(("line", "state", "ok"), [
    ("net health status: Success", "Success", True),
    ("net health status: Init", "Init", True),
    ("net health status: Fault", "Fault", False),
    ("net health status: Socket fail", "Socket fail", False),
    ("net health status: Socket failed", "Socket failed", False),
])
def test_net_health_states(line, state, ok):
    assert hp.parse_net_health(line + "\n") == state
    assert hp.net_health_ok(state) is ok


def test_ping_success_partial_and_total_loss():
    ok = ("device 0 PING 11.12.165.80\nrecv seq=0,time=0.114000ms\nrecv seq=1,time=0.067000ms\n"
          "recv seq=2,time=0.063000ms\n3 packets transmitted, 3 received, 0.00% packet loss\n")
    assert hp.parse_ping(ok, "11.12.165.80") == {"target": "11.12.165.80", "transmitted": 3, "received": 3,
                                                 "loss_pct": 0.0, "ok": True}
    partial = ("device 0 PING 11.12.166.85\nrecv seq=0,time=0.049000ms\nrecv time out seq=1\n"
               "recv seq=2,time=0.051000ms\n3 packets transmitted, 2 received, 33.33% packet loss\n")
    assert hp.parse_ping(partial, "11.12.166.85")["received"] == 2
    assert hp.parse_ping(partial, "11.12.166.85")["ok"] is False
    lost = ("device 0 PING 11.12.166.85\nrecv time out seq=0\nrecv time out seq=1\nrecv time out seq=2\n"
            "3 packets transmitted, 0 received, 100.00% packet loss\n")
    assert hp.parse_ping(lost, "x")["loss_pct"] == 100.0
    # no summary line: count the per-packet lines
    assert hp.parse_ping("device 1 PING 1.2.3.4\nrecv seq=0,time=1ms\nrecv time out seq=1\n", "1.2.3.4")[
        "loss_pct"] == 50.0


def test_set_result():
    hp.parse_set_result("Cmd executed successfully!\n", "hccn_tool -i 0 -tls -s enable 0")
    with pytest.raises(hp.ParseError, match="hccn_tool -i 0 -tls -s enable 0"):
        hp.parse_set_result("The VM does not support this command.\n", "hccn_tool -i 0 -tls -s enable 0")


# ---------------------------------------------------------------- garbage in, one clear line out


@pytest.mark.parametrize(("func", "args", "cmd"), [
    (hp.parse_link, (), "hccn_tool -i 2 -link -g"),
    (hp.parse_link_stat, (), "hccn_tool -i 2 -link_stat -g"),
    (hp.parse_tls, ("",), "hccn_tool -i 2 -tls -g"),
    (hp.parse_net_health, (), "hccn_tool -i 2 -net_health -g"),
    (hp.parse_ping, ("10.0.0.1",), "hccn_tool -i 2 -ping -g address 10.0.0.1"),
])
@pytest.mark.parametrize("output", ["", "Segmentation fault\x00 \xff dsmi_get_device_info failed, ret = -8005\n"])
def test_garbage_names_command_and_quotes_output(func, args, cmd, output):
    with pytest.raises(hp.ParseError) as err:
        func(output, *args, command=cmd)
    text = str(err.value)
    assert "`" + cmd + "`" in text
    assert ("(empty output)" in text) if not output else ("dsmi_get_device_info failed" in text)
    assert "\n" not in text


def test_ip_garbage_is_an_error_not_a_missing_ip():
    with pytest.raises(hp.ParseError, match="hccn_tool -i 1 -ip -g"):
        hp.parse_ip("ipaddr: not-an-address\n", command="hccn_tool -i 1 -ip -g")


def test_excerpt_is_short_and_single_line():
    text = hp.excerpt("line one\n" + "x" * 500)
    assert len(text) <= 165 and "\n" not in text and text.startswith("'line one | xxx")


# ------------------------------------------------------------------ values that look right but are nonsense

STAT = ("[devid 0]current time        : {now}\n[devid 0]link up count       : {up}\n"
        "[devid 0]link down count     : 0\n[devid 0]link change records :\n")


def test_link_stat_current_time_that_is_no_date_is_a_parse_error():
    with pytest.raises(hp.ParseError, match=r"expected a date in 'current time'.*Mon Oct 99 11:51:32 2025"):
        hp.parse_link_stat(STAT.format(now="Mon Oct 99 11:51:32 2025", up=1), "hccn_tool -i 0 -link_stat -g")


def test_link_stat_counts_beyond_int_limits_or_not_ascii_are_parse_errors():
    for up in ("9" * 5000, "\u0663"):  # int() refuses 5000 digits; '3' in Arabic-Indic is no count either
        with pytest.raises(hp.ParseError):
            hp.parse_link_stat(STAT.format(now="Fri Sep  1 06:37:26 2023", up=up))


@pytest.mark.parametrize("output", [
    "3 packets transmitted, 3 received, 1.2.3% packet loss",  # float() would raise
    "3 packets transmitted, 5 received, 0.00% packet loss",  # more received than sent
    "3 packets transmitted, 0 received, 300.00% packet loss",
])
def test_ping_summaries_that_cannot_be_true_are_parse_errors(output):
    with pytest.raises(hp.ParseError, match="hccn_tool -ping -g"):
        hp.parse_ping(output, "10.0.0.1")


def test_ip_and_net_health_values_must_be_addresses_and_words():
    with pytest.raises(hp.ParseError, match="valid IPv4"):
        hp.parse_ip("ipaddr:10.20.0.999\nnetmask:255.255.255.0\n")
    with pytest.raises(hp.ParseError, match="valid IPv4"):
        hp.parse_ip("ipaddr:10.20.0.9\nnetmask:255.255.0.300\n")
    with pytest.raises(hp.ParseError, match="net health status"):
        hp.parse_net_health("net health status: \x1b[31m\x00\n")


def test_excerpt_escapes_control_bytes_and_replacement_characters_stay_utf8():
    text = b"\xff\x00ok\x1b[0m\n".decode("utf-8", errors="replace")
    quoted = hp.excerpt(text)
    assert quoted == "'\ufffd\\x00ok\\x1b[0m'"
    quoted.encode("utf-8")
