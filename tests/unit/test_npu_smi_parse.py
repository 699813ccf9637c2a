"""npu-smi parsers against captured tables, with exact expected values."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils import npu_smi_parse as nsp
from ansible_collections.openfuyao.pd.plugins.module_utils.hccn_parse import ParseError, parse_hccn_conf

CAPTURES = Path(__file__).resolve().parents[1] / "fakes" / "captures"


def capture(name: str) -> str:
    return (CAPTURES / name).read_text()


A2_ROWS = [  # npu, bus, power, temp, aicore, hbm used
    (0, "0000:C1:00.0", 85.0, 36, 0, 22283), (1, "0000:01:00.0", 84.2, 36, 0, 22267),
    (2, "0000:C2:00.0", 81.8, 35, 0, 2818), (3, "0000:02:00.0", 83.9, 36, 0, 2819),
    (4, "0000:81:00.0", 81.4, 35, 0, 2829), (5, "0000:41:00.0", 81.5, 37, 0, 2829),
    (6, "0000:82:00.0", 263.2, 46, 82, 30759), (7, "0000:42:00.0", 250.5, 47, 68, 30760),
]


def test_info_a2_910b4_every_chip_exactly():
    info = nsp.parse_info(capture("npu-smi_info.a2_910B4_24.1.rc3"))
    assert info["version"] == "24.1.rc3"
    assert info["a3_layout"] is False
    assert nsp.product_of(info) == "A2"
    assert info["chips"] == [
        {"npu_id": n, "name": "910B4", "health": "OK", "power_w": p, "temp_c": t, "chip_id": 0, "phy_id": None,
         "bus_id": bus, "aicore_pct": ai, "hbm_used_mb": hbm, "hbm_total_mb": 32768}
        for n, bus, p, t, ai, hbm in A2_ROWS]
    assert info["processes"] == [
        {"npu_id": 0, "chip_id": 0, "pid": 582939, "name": "", "memory_mb": 19502},
        {"npu_id": 1, "chip_id": 0, "pid": 695171, "name": "", "memory_mb": 19498},
        {"npu_id": 6, "chip_id": 0, "pid": 99910, "name": "", "memory_mb": 27977},
        {"npu_id": 7, "chip_id": 0, "pid": 99976, "name": "", "memory_mb": 27977},
    ]


A3_HBM = [3402, 3200, 3396, 3205, 3395, 3203, 3395, 3203, 52553, 52358, 52567, 52345, 52552, 52358, 52554, 52358]
A3_BUS = ["9D", "9F", "99", "9B", "95", "97", "91", "93", "8D", "8F", "89", "8B", "85", "87", "81", "83"]
A3_POWER = [182.0, 181.0, 176.9, 181.2, 179.8, 183.8, 185.9, 182.1]
A3_TEMP = [36, 35, 35, 36, 34, 34, 36, 35, 36, 37, 37, 36, 37, 36, 34, 36]


def test_info_a3_910c_sixteen_dies_exactly():
    info = nsp.parse_info(capture("npu-smi_info.a3_910C_24.1.rc3.3"))
    assert info["version"] == "24.1.rc3.3"
    assert info["a3_layout"] is True
    assert nsp.product_of(info) == "A3"
    assert info["chips"] == [
        {"npu_id": phy // 2, "name": "Ascend910", "health": "OK",
         "power_w": A3_POWER[phy // 2] if phy % 2 == 0 else None, "temp_c": A3_TEMP[phy], "chip_id": phy % 2,
         "phy_id": phy, "bus_id": f"0000:{A3_BUS[phy]}:00.0", "aicore_pct": 0, "hbm_used_mb": A3_HBM[phy],
         "hbm_total_mb": 65536}
        for phy in range(16)]
    pids = [957687, 957770, 957790, 957852, 957876, 957912, 957957, 958011]
    assert info["processes"] == [
        {"npu_id": 4 + i // 2, "chip_id": i % 2, "pid": pid, "name": "pt_main_thread", "memory_mb": 49207}
        for i, pid in enumerate(pids)]


def test_mapping_a2_and_a3():
    a2 = nsp.parse_mapping(capture("npu-smi_info_-m.a2"))
    assert a2 == [{"npu_id": n, "chip_id": 0, "logic_id": n, "phy_id": n, "name": "Ascend 910B4"} for n in range(8)]
    a3 = nsp.parse_mapping(capture("npu-smi_info_-m.a3"))
    assert a3 == [{"npu_id": p // 2, "chip_id": p % 2, "logic_id": p, "phy_id": p, "name": "Ascend910"}
                  for p in range(16)]


def test_mapping_old_910a_without_mcu_rows():
    text = ("\tNPU ID                         Chip ID                        Chip Logic ID                  Chip Name\n"
            + "".join(f"\t{n:<30} {0:<30} {n:<30} Ascend 910A\n" for n in range(8)))
    assert [m["logic_id"] for m in nsp.parse_mapping(text)] == list(range(8))


def test_list_a2_and_a3():
    assert nsp.parse_list(capture("npu-smi_info_-l.a2")) == {
        "total": 8, "cards": [{"npu_id": n, "chip_count": 1} for n in range(8)]}
    assert nsp.parse_list(capture("npu-smi_info_-l.a3")) == {
        "total": 8, "cards": [{"npu_id": n, "chip_count": 2} for n in range(8)]}


def test_build_chips_joins_mapping_conf_and_judges_busy():
    info = nsp.parse_info(capture("npu-smi_info.a3_910C_24.1.rc3.3"))
    mapping = nsp.parse_mapping(capture("npu-smi_info_-m.a3"))
    conf = parse_hccn_conf(capture("hccn.conf.a3_16"))
    chips = nsp.build_chips(info, mapping, conf, busy_hbm_mb=8192)
    assert [c["phy_id"] for c in chips] == list(range(16))
    assert chips[0]["device_ip"] == "127.0.0.24" and chips[15]["device_ip"] == "127.0.0.94"
    assert chips[0]["netmask"] == "255.255.128.0"
    assert [c["logic_id"] for c in chips if not c["busy"]] == list(range(8))
    assert chips[9]["processes"] == [{"pid": 957770, "name": "pt_main_thread", "memory_mb": 49207}]


def test_build_chips_a2_hbm_threshold_without_process():
    info = nsp.parse_info(capture("npu-smi_info.a2_910B4_24.1.rc3"))
    mapping = nsp.parse_mapping(capture("npu-smi_info_-m.a2"))
    chips = nsp.build_chips(info, mapping, parse_hccn_conf(capture("hccn.conf.a2_8")), busy_hbm_mb=8192)
    assert [c["logic_id"] for c in chips if not c["busy"]] == [2, 3, 4, 5]
    assert chips[3]["device_ip"] == "127.0.0.190"
    info["processes"] = []  # nobody listed, HBM still 22 GB in use on 0, 1, 6, 7
    chips = nsp.build_chips(info, mapping, {}, busy_hbm_mb=8192)
    assert [c["phy_id"] for c in chips if c["busy"]] == [0, 1, 6, 7]
    assert all(c["device_ip"] is None for c in chips)


def test_info_tolerates_wider_columns_warning_line_and_blank_lead():
    """Newer drivers widen the table; only '|' splitting keeps working."""
    original = capture("npu-smi_info.a2_910B4_24.1.rc3")
    wider = "\n" + "\n".join(line.replace("| ", "|  ").replace(" |", "  |") for line in original.splitlines()) + (
        "\n[WARNING]The driver package may not be completely installed, which may cause function abnormal. "
        "Please reinstall it.\n")
    assert nsp.parse_info(wider) == nsp.parse_info(original)


def test_info_with_process_names_and_health_warning():
    text = capture("npu-smi_info.a2_910B4_24.1.rc3").replace(
        "| 2     910B4               | OK      ", "| 2     910B4               | Warning ").replace(
        "| 0       0                 | 582939        |                          |",
        "| 0       0                 | 582939        | python3.11               |")
    info = nsp.parse_info(text)
    assert info["chips"][2]["health"] == "Warning"
    assert info["processes"][0]["name"] == "python3.11"


@pytest.mark.parametrize(("func", "cmd"), [
    (nsp.parse_info, "npu-smi info"), (nsp.parse_mapping, "npu-smi info -m"), (nsp.parse_list, "npu-smi info -l")])
@pytest.mark.parametrize("output", ["", "dcmi module initialize failed. ret is -8005\n"])
def test_garbage_names_command_and_quotes_output(func, cmd, output):
    with pytest.raises(ParseError) as err:
        func(output, command=cmd)
    text = str(err.value)
    assert f"`{cmd}`" in text
    assert ("(empty output)" in text) if not output else ("dcmi module initialize failed" in text)


# ------------------------------------------------------------------ tables that parse but cannot be true


def test_mapping_refuses_a_logic_id_listed_twice():
    text = capture("npu-smi_info_-m.a2").replace("\t4                              0                              4 ",
                                                 "\t4                              0                              3 ")
    assert text != capture("npu-smi_info_-m.a2")
    with pytest.raises(ParseError, match=r"expected each Chip Logic ID once\), got: 'Chip Logic ID 3 on both NPU 3 "
                                         r"Chip 0 and NPU 4 Chip 0'"):
        nsp.parse_mapping(text)


def test_na_hbm_cells_are_unknown_not_zero():
    text = capture("npu-smi_info.a2_910B4_24.1.rc3").replace("22283/ 32768", "NA   / NA   ")
    chip = nsp.parse_info(text)["chips"][0]
    assert (chip["hbm_used_mb"], chip["hbm_total_mb"]) == (None, None)


def test_hbm_column_missing_from_a_row_is_unknown_not_the_memory_pair():
    text = capture("npu-smi_info.a2_910B4_24.1.rc3").replace("22283/ 32768", "NA          ")
    chip = nsp.parse_info(text)["chips"][0]
    assert (chip["hbm_used_mb"], chip["hbm_total_mb"]) == (None, None)


def test_table_cut_before_the_process_section_is_refused():
    text = capture("npu-smi_info.a2_910B4_24.1.rc3")
    cut = text[: text.index("| NPU     Chip ")]
    with pytest.raises(ParseError, match="output cut short"):
        nsp.parse_info(cut)


def test_health_cell_must_be_a_word_and_a_chip_missing_from_the_mapping_is_refused():
    text = capture("npu-smi_info.a2_910B4_24.1.rc3")
    with pytest.raises(ParseError, match="Health column"):
        nsp.parse_info(text.replace("| OK            |", "| \x1b[31mOK\x00     |", 1))
    info = nsp.parse_info(text)
    mapping = [m for m in nsp.parse_mapping(capture("npu-smi_info_-m.a2")) if m["npu_id"] != 5]
    with pytest.raises(ParseError, match=r"NPU 5 Chip 0 is missing"):
        nsp.build_chips(info, mapping, {}, 8192)


def test_list_with_fewer_entries_than_its_total_is_refused():
    text = capture("npu-smi_info_-l.a2")
    cut = text[: text.rindex("NPU ID")]
    with pytest.raises(ParseError, match=r"expected 8 'NPU ID : N' / 'Chip Count : N' entries as 'Total Count' says\), "
                                         r"got: '7 entries'"):
        nsp.parse_list(cut)
