"""Fuzz: arbitrary bytes/text and mutations of every captured output, fed to every parser and to both modules.

The only outcomes allowed are a result or the code's own error: :class:`ParseError` from a parser
(``ValueError`` from ``asctime_to_epoch``), ``exit_json``/``fail_json`` from a module, with a JSON
result that is valid UTF-8 and one line per problem. Anything else escaping is a bug. The modules'
last-line-of-defence handler must never fire either: its message is a bug report, not a result.

Inputs are counted; ``test_zz_fuzz_input_count`` prints the total (run with ``-s`` to see it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.openfuyao.pd.plugins.module_utils import ascend_tool
from ansible_collections.openfuyao.pd.plugins.module_utils import hccn_parse as hp
from ansible_collections.openfuyao.pd.plugins.module_utils import npu_smi_parse as nsp
from ansible_collections.openfuyao.pd.plugins.modules import hccn_check, npu_topology
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAKES = Path(__file__).resolve().parents[1] / "fakes"
REFERENCE = Path("/work/shared/reference/fixtures")  # the research copy, where present; same formats
COUNT = {"inputs": 0, "parser_calls": 0, "module_runs": 0}
BUG_MARKERS = ("could not judge", "Traceback", "please report")


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _captures() -> dict[str, bytes]:
    found: dict[bytes, str] = {}
    for folder in (FAKES / "captures", REFERENCE):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.name != "README.txt":
                    found.setdefault(path.read_bytes(), path.name)
    return {name: data for data, name in found.items()}


def _fake_outputs() -> dict[str, bytes]:
    """What the (byte-faithful) fake hccn_tool prints for every query, healthy and faulty."""
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scen = Path(tmp) / "scenario.json"
        shutil.copy(FAKES / "scenarios" / "healthy_a2.json", scen)
        doc = json.loads(scen.read_text())
        doc["devices"] = {"1": {"tls": 1, "ping_loss": {"10.0.0.1": 2}, "link_records": [
            {"ago": 60, "state": "UP"}, {"ago": 62, "state": "DOWN"}]}}
        scen.write_text(json.dumps(doc))
        env = {**os.environ, "PD_FAKE_NPU_SCENARIO": str(scen)}
        for dev in ("0", "1"):
            for args in (["-link", "-g"], ["-link_stat", "-g"], ["-tls", "-g"], ["-ip", "-g"], ["-net_health", "-g"],
                         ["-ping", "-g", "address", "10.0.0.1"]):
                proc = subprocess.run([str(FAKES / "hccn_tool"), "-i", dev, *args], env=env, capture_output=True,
                                      check=False)
                out[f"{dev} {' '.join(args)}"] = proc.stdout + proc.stderr
        # A3: vNIC, HCCS ping (one die answers, one loses packets), LLDP, net-detect, gateway; A2's 'not supported'
        a3 = {"product": "A3", "hccs_ping_unreachable": ["192.1.3.198"],
              "devices": {"1": {"hccs_ping_loss": {"192.1.2.199": 1}, "gateway": None, "lldp": None}}}
        scen.write_text(json.dumps(a3))
        for dev in ("0", "1"):
            for args in (["-vnic", "-g"], ["-hccs_ping", "-g", "address", "192.1.2.199", "cnt", "3"],
                         ["-hccs_ping", "-g", "address", "192.1.3.198", "cnt", "3"], ["-lldp", "-g"],
                         ["-netdetect", "-g"], ["-gateway", "-g"]):
                proc = subprocess.run([str(FAKES / "hccn_tool"), "-i", dev, *args], env=env, capture_output=True,
                                      check=False)
                out[f"{dev} {' '.join(args)}"] = proc.stdout + proc.stderr
        out["not supported"] = b"The command is not supported on this product.\n"
    return out


CAPTURES = _captures()
HCCN_SEEDS = _fake_outputs()
SEEDS = list(CAPTURES.values()) + list(HCCN_SEEDS.values())
JUNK_TOKENS = [b"NA", b"-", b"\x00", b"\xff\xfe", b"99999999999999999999999999999", "\u00b2".encode(),
               "\u0663".encode(), b"|", b"/", b"\n", b"\t", b"Mon Oct 99 25:61:61 2025", b"999.999.1.1", b"nan",
               b"hccn_tool is busy, please try again.", b"1.2.3%", b"Chip Logic ID", b"[devid 9]"]


@st.composite
def mutated(draw, seeds=SEEDS) -> bytes:
    """A captured output, truncated, with lines dropped/duplicated, bytes flipped and tokens replaced."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "drop_line", "dup_line", "swap_number"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[at:]
        elif op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(JUNK_TOKENS) | st.binary(max_size=8))
        elif op in ("drop_line", "dup_line"):
            lines = bytes(data).split(b"\n")
            i = at % len(lines)
            lines[i:i + 1] = [] if op == "drop_line" else [lines[i], lines[i]]
            data = bytearray(b"\n".join(lines))
        else:
            digits = [i for i, b in enumerate(data) if 48 <= b <= 57]
            if digits:
                i = digits[at % len(digits)]
                data[i:i + 1] = draw(st.sampled_from(JUNK_TOKENS))
    return bytes(data)


ANY_OUTPUT = st.one_of(mutated(), st.binary(max_size=400), st.text(max_size=300).map(str.encode))


# ------------------------------------------------------------------------------- every parser

def _only_own_errors(call) -> None:
    COUNT["parser_calls"] += 1
    try:
        result = call()
    except hp.ParseError as exc:
        assert "\n" not in str(exc)  # one line
        str(exc).encode("utf-8")  # and valid UTF-8 (strict)
        return
    json.dumps(result)  # plain data


def feed_every_parser(text: str) -> None:
    COUNT["inputs"] += 1
    for parse in (hp.parse_link, hp.parse_net_health, hp.parse_link_stat_loop, nsp.parse_list):
        _only_own_errors(lambda parse=parse: parse(text))
    _only_own_errors(lambda: hp.parse_tls(text, text[:40]))
    _only_own_errors(lambda: hp.parse_ip(text, text[:40]))
    _only_own_errors(lambda: hp.parse_ping(text, "10.0.0.1"))
    _only_own_errors(lambda: hp.parse_hccs_ping(text, "192.1.2.199"))
    for parse in (hp.parse_vnic, hp.parse_netdetect, hp.parse_lldp, hp.is_not_supported):
        _only_own_errors(lambda parse=parse: parse(text))
    _only_own_errors(lambda: hp.parse_gateway(text, text[:40]))
    _only_own_errors(lambda: hp.parse_set_result(text, "hccn_tool -i 0 -tls -s enable 0"))
    _only_own_errors(lambda: hp.parse_hccn_conf(text))
    _only_own_errors(lambda: hp.excerpt(text).encode("utf-8") and None)
    _only_own_errors(lambda: hp.ascii_int(text))

    def stat():
        parsed = hp.parse_link_stat(text)
        return hp.flap_summary(parsed, 86400)
    _only_own_errors(stat)

    def info():
        parsed = nsp.parse_info(text)
        nsp.product_of(parsed)
        return nsp.build_chips(parsed, None, hp.parse_hccn_conf(text), 8192)
    _only_own_errors(info)

    def mapping():
        return nsp.parse_mapping(text)
    _only_own_errors(mapping)
    with contextlib.suppress(ValueError):
        COUNT["parser_calls"] += 1
        hp.asctime_to_epoch(text[:40])


@fuzz(600)
@given(mutated())
def test_mutated_captures_to_every_parser(data):
    feed_every_parser(ascend_tool.decode(data))


@fuzz(600)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_to_every_parser(data):
    feed_every_parser(ascend_tool.decode(data))


@fuzz(600)
@given(st.text(max_size=400))
def test_arbitrary_text_to_every_parser(text):
    feed_every_parser(text)


@fuzz(600)
@given(st.sampled_from(sorted(CAPTURES)), st.data())
def test_every_truncation_point_of_the_table_captures(name, data):
    """Prefixes of the tables: a table cut anywhere still joins (info + -m) or fails with our own error."""
    raw = CAPTURES[name]
    cut = data.draw(st.integers(0, len(raw)))
    text = ascend_tool.decode(raw[:cut])
    feed_every_parser(text)
    if name.startswith("npu-smi_info.a"):
        kind = "a3" if ".a3_" in name else "a2"
        mapping = ascend_tool.decode(CAPTURES[f"npu-smi_info_-m.{kind}"][:data.draw(st.integers(0, 2000))])

        def joined():
            return nsp.build_chips(nsp.parse_info(text), nsp.parse_mapping(mapping), {}, 8192)
        _only_own_errors(joined)


# ------------------------------------------------------------------------------- both modules

def run_module(module, args: dict, answer) -> dict:
    """module.main() with every tool call answered by ``answer(argv)`` -> (rc, out, err, timed_out, error)."""
    COUNT["module_runs"] += 1
    COUNT["inputs"] += 1
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ascend_tool.ToolRunner, "_spawn", staticmethod(lambda argv, timeout: answer(argv)))
        mp.setattr(ascend_tool, "backoff_sleep", lambda s: None)
        with patch_module_args(args), contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            module.main()
    raw = buf.getvalue()
    raw.encode("utf-8")  # strict: no lone surrogates reach Ansible ("Refusing to deserialize ...")
    result = json.loads(raw)
    text = json.dumps(result)
    assert not any(marker in text for marker in BUG_MARKERS), result.get("msg")
    assert result.get("msg"), result
    return result


ANSWER = st.tuples(st.sampled_from([0, 0, 0, 1, 4, 11, 13, 14, -11, 255]), ANY_OUTPUT, st.binary(max_size=40),
                   st.sampled_from([False] * 12 + [True]), st.sampled_from([None] * 20 + ["Permission denied"]))


def answers(data, by_command):
    def answer(argv):
        rc, out, err, timed_out, error = data.draw(ANSWER)
        if data.draw(st.booleans()):  # half the calls get a plausible (maybe mutated) answer for their command
            out = data.draw(mutated(by_command(argv)))
        return rc, out, err, timed_out, error
    return answer


def hccn_seeds(argv: list[str]) -> list[bytes]:
    key = " ".join(argv[3:])
    found = [v for k, v in HCCN_SEEDS.items() if k.split(" ", 1)[1] == key]
    return found or [b"Cmd executed successfully!\n", b"hccn_tool is busy, please try again.\n"]


def npu_seeds(argv: list[str]) -> list[bytes]:
    tail = argv[1:]
    if tail == ["info", "-m"]:
        return [v for k, v in CAPTURES.items() if k.startswith("npu-smi_info_-m")]
    if tail == ["info", "-l"]:
        return [v for k, v in CAPTURES.items() if k.startswith("npu-smi_info_-l")]
    return [v for k, v in CAPTURES.items() if k.startswith("npu-smi_info.")]


@fuzz(250)
@given(st.data(), st.booleans(), st.booleans())
def test_hccn_check_main_only_exits_or_fails(data, fix_tls, check_mode):
    args = {"hccn_tool": "/bin/true", "hccn_conf": "/nonexistent", "devices": [0, 1], "fix_tls": fix_tls,
            "ping_targets": ["10.0.0.1"], "busy_budget": 3, "_ansible_check_mode": check_mode}
    result = run_module(hccn_check, args, answers(data, hccn_seeds))
    if "devices" in result:
        assert all("\n" not in p for p in result["problems"])
        assert all(p.startswith(("device ", "hccn_tool ")) for p in result["problems"])
        assert bool(result.get("failed")) == bool(result["problems"])


@fuzz(200)
@given(st.data(), st.booleans())
def test_hccn_check_a3_checks_only_exit_or_fail(data, check_mode):
    """vnic, lldp, netdetect, gateway and hccs_ping (whose host-level line names no single device)."""
    args = {"hccn_tool": "/bin/true", "hccn_conf": "/nonexistent", "devices": [0, 1], "busy_budget": 3,
            "checks": ["ip", "vnic", "lldp", "netdetect", "gateway", "hccs_ping"],
            "hccs_ping_targets": ["192.1.2.199", "192.1.3.198"], "_ansible_check_mode": check_mode}
    result = run_module(hccn_check, args, answers(data, hccn_seeds))
    if "devices" in result:
        assert all("\n" not in p for p in result["problems"])
        assert all(p.startswith(("device ", "hccn_tool ", "hccs_ping ")) for p in result["problems"])
        assert bool(result.get("failed")) == bool(result["problems"])
        assert result["changed"] is False


@fuzz(250)
@given(st.data(), st.booleans())
def test_npu_topology_main_only_exits_or_fails(data, require_free):
    args = {"npu_smi": "/bin/true", "hccn_conf": "/nonexistent", "require_free": require_free}
    result = run_module(npu_topology, args, answers(data, npu_seeds))
    if result.get("failed"):
        assert "\n" not in result["msg"]
    else:
        assert len(set(result["free_logic_ids"])) == len(result["free_logic_ids"])
        assert all(c["hbm_used_mb"] is not None for c in result["chips"] if c["logic_id"] in result["free_logic_ids"])


def test_zz_fuzz_input_count():
    """Runs last in this file: the total the suite generated (thousands when the file runs whole)."""
    if COUNT["module_runs"] == 0:
        pytest.skip("only meaningful when the whole file runs")
    print(f"\nfuzz: {COUNT['inputs']} generated inputs, {COUNT['parser_calls']} parser calls, "
          f"{COUNT['module_runs']} module runs, 0 exceptions escaped")
    assert COUNT["inputs"] >= 2000
