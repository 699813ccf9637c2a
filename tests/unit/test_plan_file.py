"""A reviewed plan file (-e pd_plan_file=FILE), module_utils/pd_plan_file.py: every bad file is
refused with its exact one-line message naming the file, the field and the fix; a good one is
applied, and where it differs from the inventory's plan is one warning line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import build_plan
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_file import (
    PlanFileError,
    check_plan,
    diff_plans,
    diff_warning,
    load_plan_file,
    schema_problems,
)
from plan_support import load_inventory

REWRITE = "write it again with playbooks/plan.yml on this inventory"


@pytest.fixture(scope="module")
def inventory() -> dict:
    return load_inventory("local")


@pytest.fixture(scope="module")
def good_plan(inventory) -> dict:
    return build_plan(inventory)


def write(tmp_path: Path, doc) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def refused(path: Path, hosts=("localhost",)) -> str:
    with pytest.raises(PlanFileError) as err:
        check_plan(load_plan_file(str(path)), list(hosts), str(path))
    text = str(err.value)
    assert "\n" not in text
    return text


def test_good_file_is_applied_as_it_is(tmp_path, good_plan):
    path = write(tmp_path, good_plan)
    assert check_plan(load_plan_file(str(path)), ["localhost"], str(path)) == good_plan
    assert schema_problems(good_plan) == []


@pytest.mark.parametrize("name", ["ascend-2p2d", "ucm-xpyd", "ascend-store", "hetero-ucm"])
def test_every_shipped_inventory_plans_to_a_valid_file(name):
    inv = load_inventory(name)
    plan = json.loads(json.dumps(build_plan(inv)))
    assert schema_problems(plan) == []
    assert check_plan(plan, inv["all_hosts"], "plan.json") is plan


def test_plans_are_schema_2(good_plan):
    assert good_plan["schema_version"] == 2


def test_wrong_schema_version(tmp_path, good_plan):
    path = write(tmp_path, {**good_plan, "schema_version": 3})
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: schema_version is 3, "
        f"this collection reads 2; {REWRITE}"
    )


def test_schema_1_file_is_refused_with_one_line_to_replan(tmp_path, good_plan):
    old = copy.deepcopy(good_plan)
    old["schema_version"] = 1
    for view in old["hosts"].values():
        del view["dirs"], view["services"]
    path = write(tmp_path, old)
    assert refused(path) == (
        f"pd_plan_file={path} is a schema 1 plan, this collection reads schema 2 (it adds hosts' dirs and "
        "services, typed port claims and the instance and proxy URLs): re-run playbooks/plan.yml on this "
        "inventory and review the new file"
    )


def test_host_without_dirs_or_services(tmp_path, good_plan):
    doc = copy.deepcopy(good_plan)
    del doc["hosts"]["localhost"]["dirs"]
    doc["hosts"]["localhost"]["services"] = {}
    path = write(tmp_path, doc)
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: hosts.localhost.field dirs "
        f"is missing; hosts.localhost.services must be an array, it is an object; {REWRITE}"
    )


def test_schema_version_as_a_string(tmp_path, good_plan):
    path = write(tmp_path, {**good_plan, "schema_version": "1"})
    assert refused(path) == (
        f'pd_plan_file={path} is not a plan (schema_version 2) of this inventory: schema_version is "1", '
        f"this collection reads 2; {REWRITE}"
    )


def test_missing_section(tmp_path, good_plan):
    doc = {k: v for k, v in good_plan.items() if k != "instances"}
    path = write(tmp_path, doc)
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: section instances is missing; "
        f"{REWRITE}"
    )


def test_several_missing_sections_and_no_version(tmp_path):
    path = write(tmp_path, {"schema_version": 2, "platforms": [], "connector": "x", "model": {},
                            "proxies": [], "endpoint": {}, "proxy_vip": None, "mooncake": {},
                            "storage": None, "timeouts": None, "warnings": []})
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: sections instances, proxy, hosts "
        f"are missing; {REWRITE}"
    )


def test_wrong_types(tmp_path, good_plan):
    doc = copy.deepcopy(good_plan)
    doc["instances"] = {"prefill-0": doc["instances"][0]}
    doc["storage"] = "shared"
    path = write(tmp_path, doc)
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: instances must be an array, "
        f"it is an object; storage must be an object or null, it is a string; {REWRITE}"
    )


def test_wrong_type_inside_an_instance_and_the_proxy(tmp_path, good_plan):
    doc = copy.deepcopy(good_plan)
    doc["instances"][1]["http_port"] = "8200"
    doc["instances"][0]["argv"] = "vllm serve /m"
    doc["proxy"]["port"] = True
    path = write(tmp_path, doc)
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: instances[0].argv must be an "
        "array, it is a string; instances[1].http_port must be an integer, it is a string; proxy.port must be an "
        f"integer, it is a boolean; {REWRITE}"
    )


def test_instance_that_is_not_an_object_and_missing_fields(tmp_path, good_plan):
    doc = copy.deepcopy(good_plan)
    del doc["instances"][1]["env"]
    doc["instances"].append("decode-9")
    path = write(tmp_path, doc)
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: instances[1].field env is "
        f"missing; instances[2] must be an object, it is a string; {REWRITE}"
    )


def test_not_an_object(tmp_path):
    path = write(tmp_path, "[1, 2]")
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: it holds an array, not an object; "
        f"{REWRITE}"
    )


def test_planned_for_other_hosts(tmp_path, good_plan):
    doc = copy.deepcopy(good_plan)
    doc["hosts"]["a2-p01"] = doc["hosts"]["localhost"]
    doc["instances"][0]["host"] = "a2-p02"
    path = write(tmp_path, doc)
    assert refused(path) == (
        f"pd_plan_file={path} is not a plan (schema_version 2) of this inventory: hosts a2-p01, a2-p02 are not "
        f"in it; {REWRITE}"
    )


def test_not_json(tmp_path):
    path = write(tmp_path, '{"schema_version": 1,\n  instances: []}\n')
    assert refused(path) == (
        f"pd_plan_file={path} is not JSON (line 2 column 3: Expecting property name enclosed in double quotes); "
        f"{REWRITE}"
    )


def test_empty_file_is_not_json(tmp_path):
    path = write(tmp_path, "")
    assert refused(path) == f"pd_plan_file={path} is not JSON (line 1 column 1: Expecting value); {REWRITE}"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(PlanFileError) as err:
        load_plan_file(str(path), "nope.json")
    assert str(err.value) == (
        "pd_plan_file=nope.json does not exist: give the path of the JSON that playbooks/plan.yml wrote "
        "(pd_plan_output, default ./pd_plan.json)"
    )


def test_directory(tmp_path):
    with pytest.raises(PlanFileError) as err:
        load_plan_file(str(tmp_path))
    assert str(err.value) == (
        f"pd_plan_file={tmp_path} is a directory: give the path of the JSON that playbooks/plan.yml wrote"
    )


def test_no_difference_no_warning(good_plan):
    assert diff_plans(good_plan, copy.deepcopy(good_plan)) == []
    assert diff_warning("plan.json", []) is None


def test_differences_are_named_by_path(good_plan):
    reviewed = json.loads(json.dumps(good_plan))  # as read from the file: proxy and proxies[0] apart
    prefill = next(i for i in reviewed["instances"] if i["name"] == "prefill-0")
    prefill["http_port"] = 8101
    reviewed["proxy"]["options"]["extra"] = 1
    del reviewed["timeouts"]
    differences = diff_plans(reviewed, good_plan)
    assert differences == [
        "instances[prefill-0].http_port: file 8101, inventory 8100",
        "proxy.options.extra only in the file",
        "timeouts only in the inventory's plan",
    ]
    assert diff_warning("plan.json", differences) == (
        "pd_plan_file=plan.json differs from the plan of the current inventory in 3 places: "
        "instances[prefill-0].http_port: file 8101, inventory 8100; proxy.options.extra only in the file; "
        "timeouts only in the inventory's plan. The file is applied as reviewed; to apply the inventory "
        "instead, review and write it again with playbooks/plan.yml, or run without pd_plan_file"
    )


def test_instances_added_or_removed_and_long_values(good_plan):
    reviewed = copy.deepcopy(good_plan)
    reviewed["instances"] = [i for i in reviewed["instances"] if i["name"] != "decode-0"]
    reviewed["model"]["path"] = "/" + "m" * 80
    assert diff_plans(reviewed, good_plan)[:1] == ["instances[decode-0] only in the inventory's plan"]
    long = [d for d in diff_plans(reviewed, good_plan) if d.startswith("model.path")]
    assert long == [f'model.path: file "/{"m" * 55}..., inventory "{good_plan["model"]["path"]}"']


def test_warning_lists_eight_and_counts_the_rest():
    differences = [f"d{i}: file 1, inventory 2" for i in range(11)]
    text = diff_warning("p.json", differences)
    assert "d7: file 1, inventory 2; and 3 more." in text
    assert "d8:" not in text
    assert text.startswith("pd_plan_file=p.json differs from the plan of the current inventory in 11 places: ")


def test_a_type_change_is_a_difference():
    assert diff_plans({"port": 1}, {"port": 1.0}) == ["port: file 1, inventory 1.0"]
    assert diff_plans({"on": True}, {"on": 1}) == ["on: file true, inventory 1"]
