"""benchmarks/bench_report.py: the report keeps docs/performance.md's introduction."""

from __future__ import annotations

import re
from pathlib import Path

from bench_common import Target
from bench_report import DEFAULT_INTRO, MARKER, _target_lines, write_report

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


def test_a_target_says_whether_it_was_met_and_by_how_much() -> None:
    floor = Target("one at a time", 0.9, 0.8, why="CPU per job 320 us against 240.")
    assert not floor.met
    assert floor.verdict() == "**missed** by 11%"
    assert floor.row() == ["one at a time", "\u2265 0.90\u00d7", "0.80\u00d7", "**missed** by 11%"]
    assert Target("pgqueuer", 1.2, 1.5).verdict() == "met, 25% to spare"
    cost = Target("get", 1.1, 0.99, at_least=False)
    assert cost.met
    assert cost.row()[1] == "\u2264 1.10\u00d7"
    assert Target("get", 1.1, 1.21, at_least=False).verdict() == "**missed** by 10%"
    memory = Target("peak", 30, 25.64, at_least=False, unit=" MiB")
    assert memory.row()[1:3] == ["\u2264 30 MiB", "25.6 MiB"]
    assert Target("errors", 0, 0, at_least=False, unit="").verdict() == "met"
    assert Target("errors", 0, 3, at_least=False, unit="").verdict() == "**missed** by 3"


def test_the_targets_part_lists_each_target_and_why_each_miss_happened() -> None:
    targets = [
        Target("create_many", 0.8, 0.99),
        Target("one at a time", 0.9, 0.8, why="CPU per job 320 us against 240."),
    ]
    text = "\n".join(_target_lines(targets))
    assert text.startswith("## Targets")
    assert "1 of 2 met" in text
    assert "| create_many | \u2265 0.80\u00d7 | 0.99\u00d7 | met, 24% to spare |" in text
    assert "- one at a time: missed by 11%. CPU per job 320 us against 240." in text
    assert "- create_many" not in text
    assert _target_lines([]) == []
