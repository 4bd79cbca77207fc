"""Reference pages generated from the code, so they cannot drift from it:
every setting (:class:`openft.config.Settings`) and every resolved
hyperparameter (:class:`openft.training.config.Hyperparameters`), with
their help texts, as Markdown tables.

``python -m openft.reference`` (``make docs``) rewrites the generated part
of ``docs/reference/configuration.md``, ``docs/reference/hyperparameters.md``
and ``docs/reference/model-families.md`` (from ``openft.families``)
(between ``<!-- generated -->`` and ``<!-- end generated -->``);
``tests/unit/test_docs.py`` fails when a page differs from what this
module renders.
"""

from __future__ import annotations

import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

START, END = "<!-- generated -->", "<!-- end generated -->"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "reference"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def settings_table() -> str:
    from openft.config import Settings

    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        rows.append(f"| `OPENFT_{name.upper()}` | {_default(default)} | {_cell(info.description or '')} |")
    return "\n".join(rows)


def hyperparameters_table() -> str:
    from openft.training.config import Hyperparameters

    rows = ["| Hyperparameter | Meaning |", "| --- | --- |"]
    for field in fields(Hyperparameters):
        assert field.default is MISSING or field.default is None
        rows.append(f"| `{field.name}` | {_cell(field.metadata.get('help', ''))} |")
    return "\n".join(rows)


def families_table() -> str:
    from openft import tool_format
    from openft.families import FAMILIES

    def tools(name: str) -> str:
        return f"`{name}`" if name in tool_format.CONVENTIONS and name != "none" else \
            ("no convention in its template" if name == "none" else f"`{name}`: not read yet (400)")

    def reasoning(name: str) -> str:
        return {"none": "none", "think": "`<think>` → `reasoning_content`",
                "harmony": "analysis channel → `reasoning_content`"}.get(name, f"{name}: not read yet")

    rows = ["| Family | `model_type` | Layout | LoRA SFT | Full | DPO | RFT | Serving | Tool calls | Reasoning |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for family in FAMILIES:
        layout = ", ".join(family.traits) or "dense"
        rows.append(f"| {family.name} | `{family.model_type}` | {layout} | ✓ | ✓ | ✓ | ✓ | ✓ | "
                    f"{tools(family.tools)} | {reasoning(family.reasoning)} |")
    return "\n".join(rows)


PAGES = {"configuration.md": settings_table, "hyperparameters.md": hyperparameters_table,
         "model-families.md": families_table}


def rendered(page: str, text: str) -> str:
    """``text`` with its generated part replaced by what the code says now."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{page} has no {START} ... {END} part")
    return pattern.sub(lambda _: f"{START}\n{PAGES[page]()}\n{END}", text)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS
    for page in PAGES:
        path = folder / page
        path.write_text(rendered(page, path.read_text()))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
