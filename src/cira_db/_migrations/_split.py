"""Split migration SQL into statements, the way psql does.

Semicolons inside quotes, quoted identifiers, dollar quotes, comments
(nested ones too), parentheses and SQL-standard function bodies
(``BEGIN ATOMIC ... END``) do not end a statement. The function-body rule is
psql's heuristic: inside ``CREATE [OR REPLACE] FUNCTION|PROCEDURE``, each
``BEGIN`` (and, within one, each ``CASE``) waits for its ``END``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Statement", "split_statements", "statements"]

_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
# Words that open CREATE [OR REPLACE] FUNCTION|PROCEDURE, by their first letter (as psql).
_CREATE_WORDS = {"create", "function", "procedure", "or", "replace"}
# Letters that make the quote after them a special string: E'...', B'...', X'...', N'...'.
_STRING_PREFIXES = {"e", "b", "x", "n"}


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a SQL text, with the line its code starts on."""

    text: str
    """The statement without its terminating semicolon, leading comments kept."""
    line: int
    """1-based line of the statement's first word (after comments and blanks)."""
    leading_words: tuple[str, ...]
    """Its first two tokens, lower-cased; ``""`` stands for a token that is not a word."""


def split_statements(sql: str) -> list[str]:
    """Split SQL text on top-level semicolons; empty and comment-only parts are dropped."""
    return [statement.text for statement in statements(sql)]


def statements(sql: str) -> list[Statement]:
    """The statements of ``sql``, with their lines and leading words."""
    return _Scanner(sql).run()


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$" or ord(ch) >= 0x80


class _Scanner:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.found: list[Statement] = []
        self._new_statement(0)

    def _new_statement(self, start: int) -> None:
        self.start = start
        self.code_at: int | None = None
        self.words: list[str] = []
        self.paren_depth = 0
        self.begin_depth = 0
        self.initials = ["", "", "", ""]
        self.word_count = 0

    def _code(self, at: int, word: str = "") -> None:
        if self.code_at is None:
            self.code_at = at
        if len(self.words) < 2:
            self.words.append(word)

    def _finish(self, end: int) -> None:
        if self.code_at is not None:
            before = self.sql[: self.code_at]
            line = before.count("\n") + before.count("\r") - before.count("\r\n") + 1
            text = self.sql[self.start : end].strip()
            self.found.append(Statement(text, line, tuple(self.words)))

    def run(self) -> list[Statement]:
        sql, i, n = self.sql, 0, len(self.sql)
        while i < n:
            ch = sql[i]
            after_word = i > 0 and _is_word_char(sql[i - 1])
            if sql.startswith("--", i):
                end = sql.find("\n", i)
                i = n if end == -1 else end
            elif sql.startswith("/*", i):
                i = self._block_comment_end(i)
            elif ch == "'":
                self._code(i)
                i = self._quote_end(i, "'", backslashes=self._is_escape_string(i))
            elif ch == '"':
                self._code(i)
                i = self._quote_end(i, '"', backslashes=False)
            elif ch == "$" and not after_word and (tag := _DOLLAR_TAG.match(sql, i)):
                self._code(i)
                end = sql.find(tag.group(0), tag.end())
                i = n if end == -1 else end + len(tag.group(0))
            elif not after_word and (word := _WORD.match(sql, i)):
                lowered = word.group(0).lower()
                if not (lowered in _STRING_PREFIXES and sql.startswith("'", word.end())):
                    self._word(i, lowered)
                i = word.end()
            elif ch == ";" and self.paren_depth == 0 and self.begin_depth == 0:
                self._finish(i)
                self._new_statement(i + 1)
                i += 1
            else:
                if not ch.isspace():
                    self._code(i)
                if ch == "(":
                    self.paren_depth += 1
                elif ch == ")" and self.paren_depth > 0:
                    self.paren_depth -= 1
                i += 1
        self._finish(n)
        return self.found

    def _word(self, at: int, word: str) -> None:
        self._code(at, word)
        if word in _CREATE_WORDS and self.word_count < len(self.initials):
            self.initials[self.word_count] = word[0]
        self.word_count += 1
        first, second, third, fourth = self.initials
        in_routine = first == "c" and (
            second in ("f", "p") or (second == "o" and third == "r" and fourth in ("f", "p"))
        )
        if not in_routine or self.paren_depth:
            return
        if word == "begin" or (word == "case" and self.begin_depth):
            self.begin_depth += 1
        elif word == "end" and self.begin_depth:
            self.begin_depth -= 1

    def _is_escape_string(self, quote: int) -> bool:
        """Whether the quote at ``quote`` opens an E'...' string (backslash escapes)."""
        sql = self.sql
        return (
            quote > 0
            and sql[quote - 1] in "eE"
            and (quote == 1 or not _is_word_char(sql[quote - 2]))
        )

    def _quote_end(self, i: int, quote: str, *, backslashes: bool) -> int:
        sql, n = self.sql, len(self.sql)
        end = i + 1
        while end < n:
            if backslashes and sql[end] == "\\":
                end += 2
                continue
            if sql[end] == quote:
                if end + 1 < n and sql[end + 1] == quote:
                    end += 2
                    continue
                return end + 1
            end += 1
        return n

    def _block_comment_end(self, i: int) -> int:
        sql, n = self.sql, len(self.sql)
        depth, end = 1, i + 2
        while end < n and depth:
            if sql.startswith("/*", end):
                depth, end = depth + 1, end + 2
            elif sql.startswith("*/", end):
                depth, end = depth - 1, end + 2
            else:
                end += 1
        return end
