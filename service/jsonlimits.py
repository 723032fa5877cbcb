"""Client JSON parsed within bounds: size and nesting depth are checked before the decoder runs.

Python's JSON decoder recurses once per nesting level, so ``{"a":`` x 5,000 raises a RecursionError
(an uncaught 500 that drops the connection). :func:`json_depth` measures the nesting without recursion
(strings stripped first, so brackets inside them do not count) and :func:`loads_bounded` refuses text
over ``max_bytes`` (:class:`TooLarge`) or nested deeper than ``max_depth`` (:class:`InvalidJSON`).
"""

from __future__ import annotations

import json
import operator
import re
from itertools import accumulate, repeat
from typing import Any

from service.errors import InvalidJSON, TooLarge

# A JSON string as the decoder reads it (an unterminated one runs to the end); possessive: linear time.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_LEVELS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # +1 / -1 once shifted down by one


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in ``text`` (0 for a scalar). Up to the first point where
    the text stops being JSON this is exactly the depth the decoder reaches, so it bounds the recursion."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii").translate(_LEVELS)
    return max(accumulate(map(operator.sub, brackets, repeat(1))), default=0)


def check_bounds(text: str | bytes, *, max_depth: int, max_bytes: int, loc: str = "body") -> None:
    """:class:`TooLarge` over ``max_bytes``, :class:`InvalidJSON` nested deeper than ``max_depth``."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise TooLarge(f"{loc}: JSON of {size} bytes, limit {max_bytes}", limit=max_bytes)
    depth = json_depth(text)
    if depth > max_depth:
        raise _invalid(loc, f"JSON nested {depth} deep, limit {max_depth}", "json_too_deep", max_depth=max_depth)


def loads_bounded(text: str | bytes, *, max_depth: int, max_bytes: int, loc: str = "body") -> Any:
    """``json.loads(text)`` after :func:`check_bounds`; :class:`InvalidJSON` for text that is not JSON."""
    check_bounds(text, max_depth=max_depth, max_bytes=max_bytes, loc=loc)
    try:
        return json.loads(text)
    except RecursionError:  # cannot happen within max_depth; never a 500 if it does
        raise _invalid(loc, "JSON nested too deep", "json_too_deep", max_depth=max_depth) from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8
        raise _invalid(loc, f"invalid JSON: {exc}", "json_invalid") from None


def _invalid(loc: str, msg: str, kind: str, **extensions: Any) -> InvalidJSON:
    return InvalidJSON(f"{loc}: {msg}", errors=[{"loc": [loc], "msg": msg, "type": kind}], **extensions)
