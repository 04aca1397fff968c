"""JSON Schema (ECMA-262) patterns in Python: the same meaning in `re`, and small finite languages spelled out.

The contract's patterns are ECMA regexes; `ecma_pattern` translates one to
Python `re` syntax that matches exactly the same strings. `finite_language`
lists every string a small anchored pattern matches (`^[A-Z]{2}$`: 676), so
the decoder can check it as a `Literal` (a C hash lookup) instead of running
a regex per event.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

__all__ = ["ecma_pattern", "finite_language"]


def ecma_pattern(pattern: str) -> str:
    r"""Translate a JSON Schema (ECMA-262) pattern to Python `re` syntax with the same meaning.

    ECMA `$` (no multiline flag) matches only at the very end, while Python's
    also matches before a trailing newline, which would let `"US\n"` pass
    `^[A-Z]{2}$`; and ECMA `\d`/`\w` are ASCII-only. So `$` outside a
    character class becomes `\Z` and the pattern runs with `re.ASCII`.
    """
    out: list[str] = []
    in_class = False
    escaped = False
    for ch in pattern:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif in_class:
            out.append(ch)
            in_class = ch != "]"
        elif ch == "[":
            out.append(ch)
            in_class = True
        elif ch == "$":
            out.append(r"\Z")
        else:
            out.append(ch)
    return "(?a)" + "".join(out)


_MAX_PATTERN_LANGUAGE = 4096
try:
    _sre: Any = importlib.import_module("re._constants")
except ImportError:  # not CPython 3.11+: patterns stay regexes
    _sre = None


def finite_language(pattern: str, limit: int = _MAX_PATTERN_LANGUAGE) -> tuple[str, ...] | None:
    r"""Every string an anchored JSON Schema pattern matches, if there are at most `limit`; else None.

    A pattern like `^[A-Z]{2}$` is checked fastest as a msgspec `Literal` of
    its 676 strings (a C hash lookup that also hands out shared, interned
    strings) instead of a Python regex call per event: measured 1.6x faster
    decoding of playback events. Only literals, ASCII sets and ranges,
    bounded repeats, groups and alternations are expanded; anything else
    (classes like `\d`, unbounded repeats, flags, unanchored patterns) is None
    and stays a regex.
    """
    if _sre is None:
        return None
    try:
        parsed = importlib.import_module("re._parser").parse(pattern)
    except Exception:  # private modules of CPython: without them, keep the regex
        return None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE):
        return None
    items = list(parsed)
    if len(items) < 2 or items[0] != (_sre.AT, _sre.AT_BEGINNING) or items[-1] != (_sre.AT, _sre.AT_END):
        return None
    language = _expand(items[1:-1], limit)
    if language is None:
        return None
    checker = re.compile(ecma_pattern(pattern))
    if not all(checker.search(s) for s in language):  # a guard on the expander, run once at import
        raise AssertionError(f"expanding {pattern!r} produced strings it does not match")
    return tuple(sorted(language))


def _expand(items: list[Any], limit: int) -> set[str] | None:
    """The strings a sequence of parsed regex items matches, or None if not finite and small."""
    strings = {""}
    for op, arg in items:
        if op is _sre.LITERAL:
            choices: set[str] | None = {chr(arg)}
        elif op is _sre.IN:
            choices = _expand_set(arg)
        elif op is _sre.SUBPATTERN:
            _group, add_flags, del_flags, sub = arg
            choices = None if add_flags or del_flags else _expand(list(sub), limit)
        elif op is _sre.BRANCH:
            choices = set()
            for alternative in arg[1]:
                expanded = _expand(list(alternative), limit)
                if expanded is None:
                    return None
                choices |= expanded
        elif op is _sre.MAX_REPEAT or op is _sre.MIN_REPEAT:
            low, high, sub = arg
            if high is _sre.MAXREPEAT or high > limit:
                return None
            once = _expand(list(sub), limit)
            if once is None:
                return None
            choices = set()
            repeated = {""}
            for count in range(high + 1):
                if count >= low:
                    choices |= repeated
                if count < high:
                    repeated = {a + b for a in repeated for b in once}
                if len(choices) > limit or len(repeated) > limit:
                    return None
        else:
            return None
        if choices is None or len(strings) * len(choices) > limit:
            return None
        strings = {a + b for a in strings for b in choices}
    return strings


def _expand_set(members: list[Any]) -> set[str] | None:
    chars: set[str] = set()
    for op, arg in members:
        if op is _sre.LITERAL:
            chars.add(chr(arg))
        elif op is _sre.RANGE:
            chars.update(chr(c) for c in range(arg[0], arg[1] + 1))
        else:  # NEGATE, CATEGORY (\d, \w...): not worth enumerating
            return None
    return chars
