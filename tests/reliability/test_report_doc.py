"""docs/reliability.md has the contents ``python -m reliability.report`` writes: one verdict row and one section per
part of ``reliability.report.PARTS``, in that order (a part added to the harness shows up in the committed report)."""

from __future__ import annotations

import re

from reliability import report


def test_the_committed_report_has_every_part_in_order():
    text = (report.ROOT / "docs" / "reliability.md").read_text()
    titles = [title for _, title in report.PARTS]
    verdicts = re.search(r"^\| part \| verdict \|\n\|---\|---\|\n((?:\|.*\|\n)+)", text, re.M)
    assert verdicts is not None, "no verdict table"
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", verdicts.group(1), re.M)
    assert [name for name, _ in rows] == titles
    assert all(verdict in ("**pass**", "**FAIL**", "not run") for _, verdict in rows), rows
    assert re.findall(r"^## (.+)$", text, re.M) == titles
