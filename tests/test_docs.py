"""The docs are tests: their Python examples run, and their links lead somewhere.

Every fenced block of README.md and docs/*.md whose info string starts with
``python`` is executed, in order, in one namespace per file, with the
``CIRA_DB_*`` settings a deployment would use (`AppTarget`: a fresh migrated
database, through pgbouncer in the proxy pass) and the working directory a
temporary folder. A block tagged ``python downstream`` is a file of a
downstream project (its first line is ``# <file name>``): the blocks of one
doc are written into a throwaway project and run by pytest there, as that
project would run them, and every test they define must pass. A block tagged
``python no-run`` is shown to readers but not executed.

Every relative link (``[text](path)``) must name a file or folder of this
repository, so each doc stands on its own.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from _proxy import AppTarget
from cira_db.testing import TestServer

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of a Markdown file."""

    number: int  # 1-based, counting only python blocks
    line: int  # 1-based line of the opening fence
    code: str
    run: bool
    downstream: bool = False


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, in order; ``no-run`` and ``downstream`` are marked."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        words = opening.group("info").split()
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            line = lines[end]
            strip = min(indent, len(line) - len(line.lstrip(" ")))
            body.append(line[strip:])
            end += 1
        if words and words[0].lower() in {"python", "py", "python3"}:
            blocks.append(
                Block(
                    number=len(blocks) + 1,
                    line=index + 1,
                    code="\n".join(body) + "\n",
                    run="no-run" not in words[1:] and "downstream" not in words[1:],
                    downstream="downstream" in words[1:],
                )
            )
        index = end + 1
    return blocks


def run_blocks(name: str, blocks: list[Block]) -> dict[str, Any]:
    """Execute ``blocks`` in order in one namespace; fail naming the file and block."""
    namespace: dict[str, Any] = {"__name__": f"docs:{name}"}
    for block in blocks:
        if not block.run:
            continue
        where = f"{name} python block {block.number} (line {block.line})"
        try:
            compiled = compile(block.code, f"<{where}>", "exec")
            exec(compiled, namespace)  # noqa: S102 - running the documentation is the point
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            raise AssertionError(f"{where} failed: {detail}") from exc
    return namespace


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md"] if (ROOT / "README.md").is_file() else []
    return files + sorted(DOCS.glob("*.md"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


DOC_FILES = _doc_files()
WITH_PYTHON = [path for path in DOC_FILES if python_blocks(path.read_text(encoding="utf-8"))]


# Docs whose examples connect directly even in the proxy pass, and why.
DIRECT_BY_DESIGN = {
    "docs/migrations.md": "migrations never go through the proxy: they take the direct URL",
}


@pytest.mark.parametrize("path", WITH_PYTHON, ids=_name)
def test_examples_run(
    path: Path,
    app_target: AppTarget,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if _name(path) in DIRECT_BY_DESIGN:
        monkeypatch.setenv("CIRA_DB_URL", app_target.migration_url)
    else:
        for name, value in app_target.environ().items():
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    assert blocks
    run_blocks(_name(path), blocks)


_FILE_NAME = re.compile(r"^#\s*(?P<name>[A-Za-z0-9_][A-Za-z0-9_./-]*\.py)\s*$")


def downstream_files(blocks: list[Block]) -> dict[str, str]:
    """The ``downstream`` blocks as files: name (from the first line) -> text."""
    files: dict[str, str] = {}
    for block in blocks:
        if not block.downstream:
            continue
        first = block.code.splitlines()[0] if block.code.strip() else ""
        named = _FILE_NAME.match(first)
        assert named, (
            f"python downstream block {block.number} (line {block.line}) needs '# name.py'"
        )
        name = named.group("name")
        files[name] = files.get(name, "") + block.code
    return files


WITH_DOWNSTREAM = [
    path
    for path in DOC_FILES
    if any(b.downstream for b in python_blocks(path.read_text(encoding="utf-8")))
]


@pytest.mark.slow
@pytest.mark.parametrize("path", WITH_DOWNSTREAM, ids=_name)
def test_downstream_examples_pass_in_a_downstream_project(
    path: Path,
    pytester: pytest.Pytester,
    cira_db_server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = downstream_files(python_blocks(path.read_text(encoding="utf-8")))
    assert "conftest.py" in files, f"{_name(path)} shows no downstream conftest.py"
    for name, text in files.items():
        target = pytester.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    tests = sum(len(re.findall(r"^def test_", text, re.MULTILINE)) for text in files.values())
    assert tests, f"{_name(path)}: the downstream blocks define no test"
    # The downstream project reuses this session's server, as its CI would use a service.
    monkeypatch.setenv("CIRA_DB_TEST_URL", cira_db_server.admin_url)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=tests)


def test_downstream_blocks_become_named_files() -> None:
    text = (
        "```python downstream\n# conftest.py\nA = 1\n```\n"
        "```python downstream\n# test_x.py\ndef test_a(): pass\n```\n"
        "```python downstream\n# test_x.py\ndef test_b(): pass\n```\n"
    )
    blocks = python_blocks(text)
    assert [b.run for b in blocks] == [False, False, False]
    files = downstream_files(blocks)
    assert sorted(files) == ["conftest.py", "test_x.py"]
    assert files["test_x.py"].count("def test_") == 2
    with pytest.raises(AssertionError, match=r"block 1 \(line 1\) needs '# name.py'"):
        downstream_files(python_blocks("```python downstream\nA = 1\n```\n"))


# -- links --------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\((?P<target><[^>\n]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_IMAGE = re.compile(r"!\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*(?P<target>\S+)", re.MULTILINE)
_CODE = re.compile(r"(?ms)^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[ \t]*$|`[^`\n]*`")


_MENTIONED_DOC = re.compile(r"`(?P<target>[\w.-]+(?:/[\w.-]+)*\.md)`")


def mentioned_docs(text: str) -> list[str]:
    """Markdown files named in inline code (```notes/x.md```): a reader must find them too."""
    return [m.group("target") for m in _MENTIONED_DOC.finditer(text)]


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text (outside code), fragments dropped."""
    prose = _CODE.sub("", text)
    targets = [m.group("target").strip("<>") for m in _LINK.finditer(prose)]
    targets += [m.group("target") for m in _IMAGE.finditer(prose)]
    targets += [m.group("target") for m in _REFERENCE.finditer(prose)]
    found: list[str] = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or a place in the same file
        found.append(target.split("#", 1)[0])
    return found


@pytest.mark.parametrize("path", DOC_FILES, ids=_name)
def test_relative_links_point_at_files_that_ship(path: Path) -> None:
    text = path.read_text(encoding="utf-8")

    def ships(target: str, *bases: Path) -> bool:
        for base in bases:
            resolved = (base / target).resolve()
            if resolved.is_relative_to(ROOT) and resolved.exists():
                return True
        return False

    broken = [target for target in relative_links(text) if not ships(target, path.parent)]
    # A file named in code may be written from the repository's root or the doc's folder.
    broken += [target for target in mentioned_docs(text) if not ships(target, path.parent, ROOT)]
    assert broken == [], f"{_name(path)} links what is not in the repository"


def test_link_finder_sees_links_and_skips_urls_and_code() -> None:
    text = (
        "[a](docs/a.md) [b](b.md#part) ![img](pic.png) [c](https://e.com/x.md) [d](#here)\n"
        "`[e](e.md)`\n\n```\n[f](f.md)\n```\n[g]: ../g.md\n[h](<with space.md>)\n"
    )
    assert relative_links(text) == [
        "docs/a.md",
        "b.md",
        "with space.md",
        "pic.png",
        "../g.md",
    ]
    assert mentioned_docs("see `notes/x.md`, `a b.md`, `docs/y.md#z` and `c.md`") == [
        "notes/x.md",
        "c.md",
    ]


def test_docs_folder_with_markdown_has_examples() -> None:
    """Once docs/ holds Markdown, at least one file must carry runnable examples."""
    if not list(DOCS.glob("*.md")):
        assert not any(p.parent == DOCS for p in WITH_PYTHON)
        return
    assert WITH_PYTHON, "README.md and docs/*.md hold no ```python example at all"


# -- the runner itself ---------------------------------------------------------------------------

SAMPLE = """\
# Title

```python
total = 1
```

Some text.

```bash
exit 1
```

````python
text = '''```'''
total += 1
````

```python no-run
raise SystemExit("never run")
```

1. In a list:

   ```python
   total += 10
   ```

~~~py
total *= 2
~~~
"""


def test_runner_extracts_python_blocks_in_order() -> None:
    blocks = python_blocks(SAMPLE)
    assert [b.number for b in blocks] == [1, 2, 3, 4, 5]
    assert [b.run for b in blocks] == [True, True, False, True, True]
    assert blocks[0].line == 3
    assert blocks[1].code == "text = '''```'''\ntotal += 1\n"
    assert blocks[3].code == "total += 10\n"


def test_runner_shares_one_namespace_and_skips_no_run() -> None:
    namespace = run_blocks("SAMPLE.md", python_blocks(SAMPLE))
    assert namespace["total"] == 24


def test_runner_failure_names_the_file_and_block() -> None:
    text = "```python\nx = 1\n```\n\n```python\nx = undefined_name\n```\n"
    with pytest.raises(AssertionError) as info:
        run_blocks("docs/example.md", python_blocks(text))
    message = str(info.value)
    assert "docs/example.md python block 2 (line 5) failed" in message
    assert "NameError" in message
    assert isinstance(info.value.__cause__, NameError)


def test_runner_reports_syntax_errors_with_the_block() -> None:
    expected = r"(?s)README\.md python block 1 \(line 1\) failed.*SyntaxError"
    with pytest.raises(AssertionError, match=expected):
        run_blocks("README.md", python_blocks("```python\ndef broken(:\n```\n"))
