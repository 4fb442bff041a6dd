"""Mutation check: every guard the docs promise is held by a test that fails without it.

Each guard in ``tools/mutation_guards.toml`` names a file under ``src/cira_db``,
an exact piece of its text, what to put instead (the guard removed), and the
tests that must notice. For each guard this tool copies the package to a
temporary folder, makes that one replacement (the text must occur exactly
once: anything else is an error, so a guard never silently points at nothing),
runs only the named tests against the copy (``PYTHONPATH`` puts the copy first)
and requires at least one of them to FAIL.

Before any mutant, the union of the named tests runs once against an unchanged
copy and must pass, so a failure always means "the guard is gone", never "the
test was broken anyway". One PostgreSQL server serves every run
(``CIRA_DB_TEST_URL``; an embedded one is started when that is unset).

Usage::

    python tools/mutate.py              # every guard
    python tools/mutate.py -k skip      # guards whose name contains "skip"
    python tools/mutate.py --list       # the guards, one a line

Exit status: 0 when every mutant was caught; 1 when a guard survived (its name
is printed); 2 when the guard list or the baseline run is wrong.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cira_db"
GUARDS = Path(__file__).resolve().with_name("mutation_guards.toml")
RUN_TIMEOUT = 300  # seconds for one pytest run; a hang counts as caught (it fails CI too)


class GuardError(Exception):
    """The guard list is wrong: a text not found, found twice, a test missing."""


@dataclass(frozen=True, slots=True)
class Guard:
    """One guard: where it is, how to remove it, which tests must notice."""

    name: str
    file: str
    text: str
    replacement: str
    tests: tuple[str, ...]
    why: str


def load_guards(path: Path = GUARDS) -> list[Guard]:
    """The guards of ``path``, checked for shape (every field, unique names)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    guards: list[Guard] = []
    for entry in data.get("guard", []):
        missing = {"name", "file", "text", "replacement", "tests", "why"} - entry.keys()
        if missing:
            raise GuardError(f"guard {entry.get('name', '?')!r} lacks {sorted(missing)}")
        if not entry["tests"]:
            raise GuardError(f"guard {entry['name']!r} names no test")
        if entry["text"] == entry["replacement"]:
            raise GuardError(f"guard {entry['name']!r}: the replacement is the text itself")
        guards.append(
            Guard(
                name=entry["name"],
                file=entry["file"],
                text=entry["text"],
                replacement=entry["replacement"],
                tests=tuple(entry["tests"]),
                why=entry["why"],
            )
        )
    names = [guard.name for guard in guards]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise GuardError(f"guard names used twice: {', '.join(duplicates)}")
    return guards


def mutate(guard: Guard, package: Path) -> None:
    """Remove ``guard`` from the copy of the package at ``package`` (in place)."""
    target = package / guard.file
    if not target.is_file():
        raise GuardError(f"guard {guard.name!r}: no file src/cira_db/{guard.file}")
    source = target.read_text(encoding="utf-8")
    found = source.count(guard.text)
    if found != 1:
        raise GuardError(
            f"guard {guard.name!r}: its text occurs {found} times in src/cira_db/{guard.file} "
            "(it must occur exactly once; re-point the guard at today's text)"
        )
    target.write_text(source.replace(guard.text, guard.replacement), encoding="utf-8")


def copy_package(into: Path) -> Path:
    """A copy of ``src/cira_db`` under ``into/src``; returns the ``src`` folder."""
    src = into / "src"
    shutil.copytree(PACKAGE, src / "cira_db", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _env(src: Path, server_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    env["CIRA_DB_TEST_URL"] = server_url
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_tests(src: Path, tests: tuple[str, ...], server_url: str) -> tuple[int, str]:
    """pytest on ``tests`` with the package copy at ``src`` first on the path."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=_env(src, server_url),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {RUN_TIMEOUT}s"
    return done.returncode, done.stdout + done.stderr


def _check_copy_is_used(src: Path, server_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import cira_db; print(cira_db.__file__)"],
        env=_env(src, server_url),
        capture_output=True,
        text=True,
        check=True,
    )
    if not Path(done.stdout.strip()).is_relative_to(src):
        raise GuardError(
            f"PYTHONPATH does not put the copy first: cira_db comes from {done.stdout.strip()}"
        )


def _server_url() -> tuple[str, object | None]:
    url = os.environ.get("CIRA_DB_TEST_URL")
    if url:
        return url, None
    from cira_db._embedded import start_embedded

    server = start_embedded(None)
    return server.url, server


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1][:160]
    return output.strip().splitlines()[-1][:160] if output.strip() else "no output"


def _tail(output: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in output.strip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    """Run the check; see the module docstring for the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", help="only guards whose name contains this")
    parser.add_argument("--list", action="store_true", help="print the guards and exit")
    parser.add_argument(
        "--jobs", type=int, default=2, help="mutants tested at once (default 2: one per core)"
    )
    args = parser.parse_args(argv)
    try:
        guards = load_guards()
    except GuardError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    if args.select:
        guards = [guard for guard in guards if args.select in guard.name]
    if args.list:
        for guard in guards:
            print(f"{guard.name}: src/cira_db/{guard.file} ({guard.why})")
        return 0
    if not guards:
        print("mutate: no guard selected", file=sys.stderr)
        return 2

    started = time.monotonic()
    url, server = _server_url()
    survivors: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cira_db-mutate-") as tmp:
            # Every guard's text is checked before anything runs: a moved guard fails fast.
            for number, guard in enumerate(guards):
                mutate(guard, copy_package(Path(tmp) / f"check-{number}") / "cira_db")
            baseline = copy_package(Path(tmp) / "baseline")
            _check_copy_is_used(baseline, url)
            every_test = tuple(dict.fromkeys(t for guard in guards for t in guard.tests))
            code, output = run_tests(baseline, every_test, url)
            if code != 0:
                print("mutate: the named tests fail on the unchanged package:", file=sys.stderr)
                print(_tail(output), file=sys.stderr)
                return 2
            print(f"mutate: baseline ok ({len(every_test)} tests), {len(guards)} guards")

            def run_mutant(number: int) -> tuple[int, str, float]:
                guard = guards[number]
                src = copy_package(Path(tmp) / f"mutant-{number}")
                mutate(guard, src / "cira_db")
                began = time.monotonic()
                code, output = run_tests(src, guard.tests, url)
                return code, output, time.monotonic() - began

            # Each mutant is its own pytest process on its own databases: run them side by side.
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                outcomes = list(pool.map(run_mutant, range(len(guards))))
            for guard, (code, output, took) in zip(guards, outcomes, strict=True):
                if code == 1 and "SyntaxError" in output:
                    print(f"mutate: guard {guard.name!r} makes invalid code:", file=sys.stderr)
                    print(_tail(output), file=sys.stderr)
                    return 2
                if code in (1, -1):
                    print(f"  caught    {guard.name} ({took:.1f}s): {_first_failure(output)}")
                elif code == 0:
                    survivors.append(guard.name)
                    print(f"  SURVIVED  {guard.name}: no named test fails without it")
                else:
                    print(f"mutate: guard {guard.name!r}: pytest exit {code}:", file=sys.stderr)
                    print(_tail(output), file=sys.stderr)
                    return 2
    except GuardError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    total = time.monotonic() - started
    if survivors:
        print(f"mutate: {len(survivors)} guard(s) survived: {', '.join(survivors)}")
        return 1
    print(f"mutate: all {len(guards)} guards caught in {total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
