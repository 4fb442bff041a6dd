"""benchmarks/bench_report.py: the report keeps docs/performance.md's introduction."""

from __future__ import annotations

import re
from pathlib import Path

from bench_report import DEFAULT_INTRO, MARKER, write_report

PERFORMANCE = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def _intro(text: str) -> str:
    return text.split(MARKER, 1)[0].rstrip("\n")


def test_the_default_introduction_is_the_hand_written_one() -> None:
    """A report written where none is kept yet (``--output /tmp/x.md``) gets the same text:
    when the introduction in docs/performance.md changes, copy it into DEFAULT_INTRO."""
    assert DEFAULT_INTRO.rstrip("\n") == _intro(PERFORMANCE.read_text(encoding="utf-8"))


def test_the_default_introduction_lists_every_section() -> None:
    # Read, not imported: benchmarks/run.py imports the peers of the `bench` extra.
    run = (PERFORMANCE.parents[1] / "benchmarks" / "run.py").read_text(encoding="utf-8")
    titled = sorted(int(n) for n in re.findall(r'^    "\w+": \("(\d+)\. ', run, re.MULTILINE))
    listed = [int(n) for n in re.findall(r"^(\d+)\. \*\*", DEFAULT_INTRO, re.MULTILINE)]
    assert len(titled) == 12
    assert listed == titled


def test_a_new_report_gets_the_introduction_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.md"
    write_report(fresh, ["body"])
    assert _intro(fresh.read_text(encoding="utf-8")) == DEFAULT_INTRO.rstrip("\n")
    kept = tmp_path / "kept.md"
    kept.write_text(f"# Mine\n\n{MARKER}\n\nold\n", encoding="utf-8")
    write_report(kept, ["new"])
    assert kept.read_text(encoding="utf-8") == f"# Mine\n\n{MARKER}\n\nnew\n"
