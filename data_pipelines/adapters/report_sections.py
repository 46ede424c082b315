"""Section splitting for free-text radiology reports (MIMIC-CXR style).

Header convention (as in MIT-LCP/mimic-cxr `txt/section_parser.py`): a header is an upper-case run of
letters, spaces and `()/,-` at the start of a line (MIMIC lines carry one leading space), followed by a colon
and whitespace, e.g. ` FINDINGS:  `. The text of a section runs to the next header. Header names are
normalised with a small alias table; the fallbacks `last_paragraph` and `comparison` mirror the official
`mimic_cxr_sectioned.csv` columns.
"""

from __future__ import annotations

import dataclasses
import re

_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z ()/,-]*?)[ \t]*:(?=\s|$)", re.MULTILINE)
_ALIASES = {
    "finding": "findings",
    "findings": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "impression and findings": "impression",
    "comparison": "comparison",
    "comparisons": "comparison",
    "indication": "indication",
    "indications": "indication",
    "history": "history",
    "clinical history": "history",
    "technique": "technique",
    "examination": "examination",
    "exam": "examination",
}
_ADDENDUM_RULE = re.compile(r"^\s*_{5,}\s*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class ReportSections:
    findings: str = ""
    impression: str = ""
    comparison: str = ""
    last_paragraph: str = ""
    sections: tuple[tuple[str, str], ...] = ()  # (normalised name, text) in report order


def _collapse(text: str) -> str:
    return " ".join(text.split())


def split_sections(text: str) -> list[tuple[str, str]]:
    """[(normalised header name, whitespace-collapsed text)] in order; text before the first header is
    returned under 'preamble'. Header names without an alias are lower-cased."""
    matches = list(_HEADER.finditer(text))
    out = []
    start = 0
    name = "preamble"
    for m in matches:
        out.append((name, _collapse(text[start : m.start()])))
        raw = _collapse(m.group(1)).lower()
        name = _ALIASES.get(raw, raw)
        start = m.end()
    out.append((name, _collapse(text[start:])))
    return [(n, t) for n, t in out if not (n == "preamble" and not t)]


def _last_paragraph(text: str) -> str:
    body = _ADDENDUM_RULE.split(text)[-1]
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", body) if p.strip()]
    if not paragraphs:
        return ""
    last = _HEADER.sub("", paragraphs[-1], count=1)
    return _collapse(last)


def parse_report_sections(text: str) -> ReportSections:
    """FINDINGS, IMPRESSION, COMPARISON (repeated sections are joined) and the last paragraph of a report."""
    sections = split_sections(text)
    joined: dict[str, list[str]] = {}
    for name, body in sections:
        if body:
            joined.setdefault(name, []).append(body)
    get = lambda key: " ".join(joined.get(key, []))
    return ReportSections(
        findings=get("findings"),
        impression=get("impression"),
        comparison=get("comparison"),
        last_paragraph=_last_paragraph(text),
        sections=tuple(sections),
    )
