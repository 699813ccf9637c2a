"""pyproject_dependencies: the [project] dependencies of a pyproject.toml's text (wheelhouse.yml), bad text one line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.openfuyao.pd.plugins.filter.pyproject_dependencies import pyproject_dependencies

ROOT = Path(__file__).resolve().parents[2]
CONNECTOR = ROOT / "files" / "connector" / "pyproject.toml"


def test_the_host_side_package_requirements_as_declared() -> None:
    text = CONNECTOR.read_text()
    want = tomllib.loads(text)["project"]["dependencies"]
    assert pyproject_dependencies(text) == want
    assert any(r.startswith("aiohttp") for r in want) and any(";" in r for r in want)  # markers are kept
    assert pyproject_dependencies(text, ["mooncake"]) == [*want, "mooncake-transfer-engine-non-cuda"]


def test_an_empty_list_is_no_requirement() -> None:
    assert pyproject_dependencies('[project]\nname = "x"\ndependencies = []\n') == []


@pytest.mark.parametrize(("text", "extras", "why"), [
    ("[project\n", None, "pyproject_dependencies: the text is not TOML ("),
    ('[tool.x]\na = 1\n', None, "pyproject_dependencies: the pyproject.toml has no [project] dependencies"),
    ('[project]\ndependencies = "aiohttp"\n', None, "pyproject_dependencies: [project] dependencies is not a list"),
    ('[project]\ndependencies = [1]\n', None, "pyproject_dependencies: [project] dependencies is not a list"),
    ('[project]\ndependencies = []\n', ["gpu"], "pyproject_dependencies: no [project.optional-dependencies] group 'gpu' (it has none)"),
    (None, None, "pyproject_dependencies: expects the text of a pyproject.toml, got NoneType"),
])
def test_bad_text_is_one_line_with_the_fix(text: object, extras: list[str] | None, why: str) -> None:
    with pytest.raises(AnsibleFilterError) as err:
        pyproject_dependencies(text, extras)  # type: ignore[arg-type]
    assert str(err.value).startswith(why) and "\n" not in str(err.value)
