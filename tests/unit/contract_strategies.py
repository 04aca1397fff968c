"""Hypothesis strategies derived from the contract, shared by the decoder and archive tests."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from schemas.contract import FieldSpec


def ecma_matches(pattern: str, value: str) -> bool:
    """Whether `value` matches a JSON Schema (ECMA-262) pattern: `$` is end of input only, classes are ASCII."""
    return re.search(pattern.replace("$", r"\Z"), value, re.ASCII) is not None


def value_strategy(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Valid values of one contract field."""
    if spec.const is not None:
        return st.just(spec.const)
    if spec.enum is not None:
        return st.sampled_from(spec.enum)
    if spec.type == "integer":
        return st.integers(min_value=spec.minimum, max_value=spec.maximum)
    if spec.pattern is not None:
        return st.from_regex(spec.pattern, fullmatch=True).filter(lambda s: ecma_matches(spec.pattern or "", s))
    return st.text(min_size=spec.min_length or 0, max_size=spec.max_length)
