"""Text a client sends that openft cannot keep or use: found anywhere in a
decoded JSON value, with the dotted path of where it is (``data_source.source.content.3.item.name``).

* a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, but not Unicode text;
* a NUL character (``"\\u0000"``): valid Unicode, but PostgreSQL's JSON
  refuses it, so an object holding it could not be stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def encodes(text: str) -> bool:
    """Whether the text is Unicode (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable(text: str) -> bool:
    """Whether a database can keep the text (Unicode, and no NUL)."""
    return "\x00" not in text and encodes(text)


def first_bad_path(value: Any, good: Callable[[str], bool], prefix: str = "") -> str | None:
    """The dotted path of the first string or key of ``value`` that is not
    ``good``; None when every one is."""
    todo: list[tuple[str, Any]] = [(prefix, value)]
    while todo:
        path, item = todo.pop()
        if isinstance(item, str):
            if not good(item):
                return path
        elif isinstance(item, dict):
            for key, sub in item.items():
                here = f"{path}.{key}" if path else str(key)
                if not good(str(key)):
                    return here
                todo.append((here, sub))
        elif isinstance(item, list):
            todo.extend((f"{path}.{index}" if path else str(index), sub) for index, sub in enumerate(item))
    return None
