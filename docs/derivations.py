"""A griffe extension (``mkdocs.yml``: mkdocstrings' ``extensions``) that keeps the line
structure of the derivations in funcbp's docstrings.

The ops' ``bwd``/``jvp`` docstrings write their derivations one step a line, indented under a
lead-in that ends with a colon::

    With Y_nj = Σ_i X_ni W_ij + b_j over flattened leading dims n:
      ∂L/∂X_ni = Σ_j dY_nj W_ij          -> dX = dY Wᵀ            (..., I)
      ∂L/∂W_ij = Σ_n X_ni dY_nj          -> dW = Xᵀ dY

Markdown would run those lines together into one paragraph; here every such indented block
(and every reStructuredText-style ``====`` table) becomes a fenced ``text`` block, so the site
shows it as the source does. Indented lists, the continuation lines of a list item and the
body of a Google-style section (``Attributes:``, ``Returns:``, ...) are left alone.
"""

from __future__ import annotations

import re

import griffe

SECTIONS = re.compile(
    r"^(Args|Arguments|Attributes|Parameters|Params|Returns|Return|Yields|Raises|Exceptions|"
    r"Warns|Examples|Example|Note|Notes|Warning|Warnings|Other Parameters|Receives|"
    r"Methods|Functions|Classes|Modules|References|See Also|Todo):\s*$"
)
LIST_ITEM = re.compile(r"^\s*([*+-]|\d+[.)])\s")
RST_RULE = re.compile(r"^=+( +=+)+\s*$")


def _indented(line: str) -> bool:
    return line.startswith("  ") and line.strip() != ""


def _lead_in(lines: list[str], i: int) -> bool:
    """Whether the indented run starting at ``lines[i]`` follows a lead-in ``...:`` line."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or lines[j].startswith(" ") or LIST_ITEM.match(lines[j]):
        return False
    return lines[j].rstrip().endswith(":") and not SECTIONS.match(lines[j].strip())


def _run_end(lines: list[str], i: int, inside) -> int:
    """One past the last line of the run starting at ``i`` (blank lines inside it included)."""
    end = i
    for k in range(i, len(lines)):
        if inside(lines[k]):
            end = k + 1
        elif lines[k].strip():
            break
    return end


def fence_derivations(text: str) -> str:
    """``text`` with derivation blocks and ``====`` tables wrapped in ```` ```text ```` fences."""
    lines, out, i = text.splitlines(), [], 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if not in_fence and RST_RULE.match(line):  # the table ends at the first blank line
            end = next((k for k in range(i, len(lines)) if not lines[k].strip()), len(lines))
            out += ["", "```text", *lines[i:end], "```", ""]
            i = end
        elif not in_fence and _indented(line) and not LIST_ITEM.match(line) and _lead_in(lines, i):
            end = _run_end(lines, i, _indented)
            out += ["", "```text", *lines[i:end], "```", ""]
            i = end
        else:
            out.append(line)
            i += 1
    return "\n".join(out)


class Derivations(griffe.Extension):
    """Apply `fence_derivations` to every docstring once the package is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_derivations(obj.docstring.value)
