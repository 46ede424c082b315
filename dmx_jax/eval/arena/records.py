"""Records shared by the arena: reports, judge requests / responses, the judge interface, verdict parsing."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Protocol

VERDICTS = ("A", "B", "TIE")
_VERDICT_LINE = re.compile(r"VERDICT:[ \t]*(A|B|TIE)")


@dataclasses.dataclass(frozen=True)
class Report:
    """A report text with optional boxes (pixel xyxy in the study's image frame)."""

    text: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def render(self) -> str:
        if not self.boxes:
            return self.text
        boxes = "; ".join("[" + ", ".join(f"{v:g}" for v in box) + "]" for box in self.boxes)
        return f"{self.text}\nBoxes: {boxes}"


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
    """Compare report_a (shown first) with report_b for one study, given the reference."""

    study_id: str
    reference: Report
    report_a: Report
    report_b: Report


@dataclasses.dataclass(frozen=True)
class JudgeResponse:
    """verdict: "A", "B", "TIE", or None when the answer had no valid final verdict line (unparseable)
    or the call failed (then `error` says why and nothing is cached)."""

    verdict: str | None
    raw: str
    error: str | None = None


class Judge(Protocol):
    judge_id: str  # stable identity for the cache (model, endpoint, version; never a credential)
    label: str  # shown in outputs, e.g. "offline rubric judge"

    def prompt_hash(self, request: JudgeRequest) -> str: ...

    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]: ...


def parse_verdict(text: str) -> str | None:
    """ "A" / "B" / "TIE" when the last non-empty line is exactly `VERDICT: A|B|TIE`, else None."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return None
    match = _VERDICT_LINE.fullmatch(lines[-1])
    return match.group(1) if match else None
