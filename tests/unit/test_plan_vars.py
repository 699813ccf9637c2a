"""The variable table (pd_plan_vars.VAR_SPECS) and the planner's typed accessor (_Ctx.get):
the table is well formed and complete, and get() checks and coerces as the old per-call checks did."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_vars as pv
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import _Ctx, _literal
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
PLANNER = sorted((ROOT / "plugins" / "module_utils").glob("pd_plan*.py"))
# A read of a variable by its literal name: ctx.get(h, "tp", ...), ctx.raw(...), ctx.key(...).
# pd_plan_ha._group_setting(ctx, hosts, "proxy_vip_prefix", ...) reads one name on every proxy host.
READ = re.compile(
    r"(?:ctx\.(?:get|raw|key)\([^,()]+(?:\([^()]*\))?[^,()]*|_group_setting\(\s*ctx,\s*\w+),\s*\"([a-z_]+)\""
)


def _ctx(hv: dict) -> _Ctx:
    return _Ctx({"hostvars": {"h": hv}})


def test_every_spec_is_well_formed() -> None:
    assert len(pv.SPECS) == len(pv.VAR_SPECS), "a name appears twice in VAR_SPECS"
    for s in pv.VAR_SPECS:
        assert s.scope in pv.SCOPES and s.type in pv.TYPES and s.section in pv.SECTIONS, s
        assert s.doc.strip(), f"{s.var} has no doc line"
        assert (s.type == "enum") == bool(s.choices), f"{s.var}: choices go with type enum"
        assert (s.section == "role") == (s.scope == "role"), s
        if s.type in ("int", "port") and s.default is not None:
            low = 1 if s.minimum is None else s.minimum
            assert int(s.default) >= low and (s.maximum is None or int(s.default) <= s.maximum), s
        if s.type == "enum" and s.default is not None:
            assert s.default in s.choices, s


def test_the_planner_reads_only_declared_variables_and_every_declared_one() -> None:
    """Every literal name the planner reads is in the table, and the table has no dead rows.
    (Names read through a loop variable are in the table too: raw() raises KeyError otherwise.)"""
    read = set()
    for path in PLANNER:
        read |= set(READ.findall(path.read_text()))
    assert read - set(pv.SPECS) == set()
    # Read in a loop over names (the vLLM integer flags), or by host_address() from the plain
    # hostvars (pd_address, which the action plugin and the day-2 tools read the same way).
    elsewhere = {"max_model_len", "max_num_batched_tokens", "max_num_seqs", "seed", "address"}
    assert set(pv.SPECS) - read == elsewhere


def test_known_names_are_the_table_with_role_forms() -> None:
    known = pv.known_names()
    for s in pv.VAR_SPECS:
        assert s.var in known
        assert ("pd_decode_" + s.name in known) == (s.scope == "role")
    # kv_load_failure_policy is read per role: its role forms are no typo.
    assert pv.typo_warnings("h", ["pd_prefill_kv_load_failure_policy"]) == []


def test_a_role_form_wins_and_a_null_role_form_unsets() -> None:
    ctx = _ctx({"pd_tp": 2, "pd_prefill_tp": 4, "pd_decode_max_num_seqs": None, "pd_max_num_seqs": 8})
    assert ctx.get("h", "tp", "prefill") == 4 and ctx.key("h", "tp", "prefill") == "pd_prefill_tp"
    assert ctx.get("h", "tp", "decode") == 2 and ctx.key("h", "tp", "decode") == "pd_tp"
    assert ctx.get("h", "max_num_seqs", "prefill") == 8
    assert ctx.get("h", "max_num_seqs", "decode") is None and ctx.problems == []


def test_a_host_variable_read_with_a_role_or_an_undeclared_one_is_a_planner_bug() -> None:
    with pytest.raises(ValueError, match="pd_platform is a host variable"):
        _ctx({}).get("h", "platform", "prefill")
    with pytest.raises(KeyError):
        _ctx({}).get("h", "no_such_setting")


def test_unset_gives_the_spec_default_or_none() -> None:
    ctx = _ctx({"pd_proxy_port": None})
    assert ctx.get("h", "proxy_port") == 9090
    assert ctx.get("h", "tp", "decode") == 1
    assert ctx.get("h", "max_model_len", "decode") is None
    assert ctx.get("h", "trust_remote_code") is True
    assert ctx.get("h", "extra_args", "decode") == [] and ctx.get("h", "env", "decode") == {}
    assert ctx.get("h", "block_size", default=128) == 128
    assert ctx.problems == []


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from([s.name for s in pv.VAR_SPECS if s.type in ("int", "port")]),
       value=st.one_of(st.integers(-5, 70000), st.integers(-5, 70000).map(str),
                       st.integers(0, 9).map(lambda i: f" {i} "), st.booleans(), st.floats(allow_nan=False),
                       st.text(max_size=4), st.sampled_from(["¹", "٣", "--5", "-", " 7\t"])))
def test_integers_come_as_ints_or_ini_strings_and_anything_else_is_one_line(name: str, value: object) -> None:
    spec = pv.SPECS[name]
    role = "prefill" if spec.scope == "role" else None
    var = f"pd_prefill_{name}" if role else f"pd_{name}"
    ctx = _ctx({var: value})
    got = ctx.get("h", name, role)
    low = 1 if spec.minimum is None else spec.minimum
    high = 65535 if spec.type == "port" else spec.maximum
    read = _literal(value)  # an INI string that opens with [ or { is read as a literal first (e.g. "{}")
    text = read.strip() if isinstance(read, str) else None
    as_int = int(text) if text is not None and re.fullmatch(r"-?[0-9]+", text) else read
    ok = isinstance(as_int, int) and not isinstance(as_int, bool) and as_int >= low and (high is None or as_int <= high)
    if ok:
        assert got == as_int and ctx.problems == []
    else:
        rng = f">= {low}" if high is None else f"in {low}..{high}"
        assert got is None
        assert ctx.problems == [f"host h: {var}={as_int!r} must be an integer {rng}"]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from([s.name for s in pv.VAR_SPECS if s.type == "bool"]),
       value=st.one_of(st.booleans(), st.sampled_from(["true", "Yes", "ON", "1", "false", "no", "Off", "0"]),
                       st.text(max_size=5), st.integers(-2, 2)))
def test_booleans_take_yaml_and_ini_spellings_and_refuse_the_rest(name: str, value: object) -> None:
    spec = pv.SPECS[name]
    role = "decode" if spec.scope == "role" else None
    var = f"pd_decode_{name}" if role else f"pd_{name}"
    ctx = _ctx({var: value})
    got = ctx.get("h", name, role)
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if isinstance(value, bool):
        assert got is value and ctx.problems == []
    elif isinstance(value, str) and value.lower() in words:
        assert got is words[value.lower()] and ctx.problems == []
    else:
        assert got is None and ctx.problems == [f"host h: {var}={value!r} must be true or false"]


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.dictionaries(st.text(min_size=1, max_size=3), st.integers()), st.integers(),
                       st.lists(st.integers(), max_size=2)))
def test_mappings_stay_mappings_and_anything_else_is_one_line(value: object) -> None:
    ctx = _ctx({"pd_kv_extra_config": value})
    got = ctx.get("h", "kv_extra_config")
    if isinstance(value, dict):
        assert got == value and ctx.problems == []
    else:
        assert got == {}
        assert ctx.problems == [f"host h: pd_kv_extra_config must be a mapping of NAME: value, got {value!r}"]


def test_ini_strings_of_lists_and_mappings_are_read_as_such() -> None:
    ctx = _ctx({"pd_prefill_env": "{'A': '1'}", "pd_decode_extra_args": "['--x', 2]"})
    assert ctx.get("h", "env", "prefill") == {"A": "1"}
    assert ctx.get("h", "extra_args", "decode") == ["--x", "2"]


def test_a_digit_that_is_not_ascii_is_one_line_not_a_crash() -> None:
    """str.isdigit() takes '¹'; int() does not: the planner used to raise ValueError on it."""
    from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import PlanError, build_plan

    inventory = {"groups": {"prefill": ["a"], "decode": ["a"], "proxy": ["a"]},
                 "hostvars": {"a": {"pd_model": "/m", "pd_block_size": "¹", "pd_decode_tp": "--2",
                                    "ansible_connection": "local"}}}
    with pytest.raises(PlanError) as err:
        build_plan(inventory)
    assert err.value.problems == ["host a: pd_decode_tp='--2' must be an integer >= 1",
                                  "host a: pd_block_size='¹' must be an integer >= 1"]
