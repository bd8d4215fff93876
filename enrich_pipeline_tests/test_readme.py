"""The README says what the code does: its configuration tables list exactly the settings the
code declares, each environment variable is declared once, and the quickstart is the two make
targets."""

from __future__ import annotations

import re

from enrich_pipeline.settings import declared_settings
from enrich_pipeline_tests.conftest import REPO

_TABLE_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \|", re.MULTILINE)


def _configuration_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]


def test_the_configuration_tables_list_exactly_the_declared_settings() -> None:
    documented = _TABLE_ROW.findall(_configuration_section())
    declared = set(declared_settings())
    assert not declared - set(documented), "declared but not in the README's tables"
    assert not set(documented) - declared, "in the README's tables but not declared"
    assert len(documented) == len(set(documented)), "a variable has two rows"


def test_each_environment_variable_is_declared_in_one_place() -> None:
    sources = {
        path: path.read_text(encoding="utf-8")
        for folder in ("enrich_pipeline", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
    }
    for name in declared_settings():
        quoted = re.compile(rf"[\"']{name}[\"']")
        places = [
            str(path.relative_to(REPO)) for path, text in sources.items() if quoted.search(text)
        ]
        assert len(places) == 1, f"{name} is written out as a string in {places}"


def test_readme_quickstart_is_the_two_make_targets() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("##", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile
