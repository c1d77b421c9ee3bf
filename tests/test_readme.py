"""The README tells the truth about the settings and the commands."""

from __future__ import annotations

import re
import shlex

from intent.settings import REPO_DIR, settings_table

README = (REPO_DIR / "README.md").read_text(encoding="utf-8")


def test_the_configuration_table_lists_every_setting_with_its_default() -> None:
    table = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", README, re.S)
    assert table is not None, "README.md lost its settings-table markers"
    assert table.group(1) == settings_table(), (
        "README.md's configuration table is out of date: paste the output of "
        '`python -c "from intent.settings import settings_table as t; print(t())"`'
    )


def test_the_quick_start_is_the_two_make_targets_and_ci_runs_the_test_one() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines() if line.startswith("make ")]
    assert commands == ["make demo", "make test"]
    ci = (REPO_DIR / ".ci" / "run").read_text()
    assert [shlex.split(line) for line in ci.splitlines() if line.startswith("make")] == [["make", "test"]]
