"""The Python examples in README.md and docs/*.md run, against a fresh migrated database.

Every fenced block whose info string starts with ``python`` is executed, in
order, in one namespace per file, with ``CIRA_DB_URL`` pointing at a fresh
migrated database and the working directory a temporary folder. A block
tagged ``python no-run`` is shown to readers but not executed.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, in order; ``python no-run`` blocks are marked."""
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
                    run="no-run" not in words[1:],
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


@pytest.mark.parametrize("path", WITH_PYTHON, ids=_name)
def test_examples_run(
    path: Path,
    cira_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("CIRA_DB_URL", cira_db_url)
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    assert blocks
    run_blocks(_name(path), blocks)


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
