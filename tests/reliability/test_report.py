"""``reliability.report``: the parts' sections joined into one report, with a verdict per part."""

from __future__ import annotations

import json

from reliability import report


def test_report_joins_sections_and_says_what_did_not_pass(tmp_path):
    (tmp_path / "crash.json").write_text(json.dumps({"ok": True}))
    (tmp_path / "crash.md").write_text("## 1. Crash injection\n\n213 crashes\n")
    (tmp_path / "load.json").write_text(json.dumps({"ok": False}))
    (tmp_path / "load.md").write_text("## 3. Load\n\nlost an update\n")
    out = tmp_path / "reliability.md"

    assert report.main(["--results", str(tmp_path), "--out", str(out)]) == 1  # not every part passed
    text = out.read_text()
    assert "| 1. Crash injection | **pass** |" in text
    assert "| 3. Load | **FAIL** |" in text
    assert "| 2. Bad input | not run |" in text and "## 2. Bad input\n\nNot run." in text
    assert text.index("213 crashes") < text.index("## 2. Bad input") < text.index("lost an update")


def test_report_passes_when_every_part_passed(tmp_path):
    for part, _ in report.PARTS:
        (tmp_path / f"{part}.json").write_text(json.dumps({"ok": True}))
        (tmp_path / f"{part}.md").write_text(f"## {part}\n")
    assert report.main(["--results", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 0
