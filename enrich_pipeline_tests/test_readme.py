"""The README's configuration tables name every setting the code reads."""

from __future__ import annotations

from enrich_pipeline.sandbox.config import ENV_VARS
from enrich_pipeline.settings import SETTINGS
from enrich_pipeline_tests.conftest import REPO


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    names = [s.env for s in SETTINGS.values()] + [v.name for v in ENV_VARS]
    missing = [name for name in names if f"| `{name}` |" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_readme_quickstart_is_the_two_make_targets() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("##", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile
