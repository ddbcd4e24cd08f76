"""LaTeX versions of the report's Markdown tables (booktabs), for a paper: ``privacy_utility.tex``, ``pivot.tex``.

The Markdown tables are the source of truth; this converts them cell by cell, so both always hold the same figures.
Written by hand because pandas' ``to_latex`` works from a DataFrame, and the tables are built as text with their
marks (↓, ‡, ±) already in place.
"""

from __future__ import annotations

import re

_SYMBOLS = {
    "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "≥": r"$\geq$", "ε": r"$\varepsilon$",
    "δ": r"$\delta$", "‡": r"\ddag{}", "·": r"$\cdot$", "–": "--", "→": r"$\rightarrow$", "×": r"$\times$",
}
_SPECIAL = re.compile(r"([%&#_$])")


def escape(text: str) -> str:
    """A Markdown cell as LaTeX: special characters escaped, the report's symbols in math mode, `code` as \\texttt
    and *emphasis* as \\emph."""
    out = _SPECIAL.sub(r"\\\1", text.replace("\\", r"\textbackslash{}"))
    out = re.sub(r"`([^`]*)`", r"\\texttt{\1}", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"\\textbf{\1}", out)
    out = re.sub(r"\*([^*]+)\*", r"\\emph{\1}", out)
    for sym, tex in _SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_latex(markdown: str) -> str:
    """Every Markdown table of ``markdown`` as a booktabs ``tabular`` (first column left-aligned, the rest right);
    the text around the tables as paragraphs."""
    lines, out, i = markdown.splitlines(), [], 0
    while i < len(lines):
        rule = i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: ")
        if lines[i].lstrip().startswith("|") and rule:
            header = _cells(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            spec = "l" * min(2, len(header)) + "r" * max(0, len(header) - 2)
            out += [r"\begin{tabular}{" + spec + "}", r"\toprule",
                    " & ".join(escape(c) for c in header) + r" \\", r"\midrule"]
            out += [" & ".join(escape(c) for c in row) + r" \\" for row in rows]
            out += [r"\bottomrule", r"\end{tabular}", ""]
            continue
        if lines[i].strip():
            out.append(escape(lines[i].strip()) + "\n")
        i += 1
    return "\n".join(out).rstrip() + "\n"
