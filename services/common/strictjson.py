"""JSON decoding for bodies from outside (HTTP requests, bus messages) that refuses what cannot be stored.

`json.loads` accepts, and PostgreSQL or asyncpg later refuse, with an error nobody maps:

- U+0000 (`"\\u0000"`): neither `text` nor `jsonb` can hold it;
- an unpaired UTF-16 surrogate (`"\\ud800"`, or its raw UTF-8 bytes, which `json.loads`
  decodes with `surrogatepass`): asyncpg cannot encode it;
- `NaN`, `Infinity` and numbers too large for a float (`1e400`): not JSON, and `jsonb` refuses them.

Nesting thousands of levels deep makes `json.loads` raise RecursionError, which is no
ValueError. `loads` turns all of these into ValueError (`UnstorableText` for the first
two, with the path of the offending string), so callers keep one `except ValueError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Only these escapes, or a raw surrogate in non-ASCII text, can decode to a character
# `UnstorableText` is about: the common body is scanned in C and never walked. (One regex for
# both would be four times slower: a leading character class defeats the literal prefix search.)
_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_RAW_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnstorableText(ValueError):
    """A string (or member name) holds U+0000 or an unpaired surrogate; `path` says which."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path or 'the document'} holds U+0000 or an unpaired UTF-16 surrogate")
        self.path = path


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


# One decoder for the process: json.loads with hooks would build a new one on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def loads(raw: bytes) -> Any:
    """Decode `raw` like `json.loads`; ValueError for anything that is not storable JSON."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # what json.loads(bytes) does
        value = _DECODER.decode(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if _ESCAPE.search(text) or (not text.isascii() and _RAW_SURROGATE.search(text)):
        path = unstorable_path(value)
        if path is not None:
            raise UnstorableText(path)
    return value


def unstorable_path(value: Any) -> str | None:
    """The path (`a.b[2]`) of the first string or member name holding U+0000 or a lone surrogate.

    Iterative, so a deep document cannot exhaust the stack. The empty string is the top level.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return path
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                # The path goes into the problem body and logs: the bad character itself does not.
                sub = _UNSTORABLE.sub("\ufffd", f"{path}.{key}" if path else key)
                if _UNSTORABLE.search(key):
                    return sub
                children.append((sub, child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(item)]))
    return None
