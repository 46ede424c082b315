"""Rule-based CheXpert labeler: report text -> 14 observations (1 positive, 0 negative, -1 uncertain, NaN).

Host-side Python, NegEx style, with the phrase tables in `chexpert_phrases`:
1. lower-case; sentences end at `.` (not inside a number), `?`, `!` or a newline; clauses end at the
   TERMINATORS ("but", "however", "there is", ";" ...). No cue acts across a clause boundary.
2. Mentions are matched longest-first without overlap (so "pericardial effusion" blocks "effusion").
   An ANATOMY mention ("heart size", "mediastinum") counts only with a STATE word ("normal", "enlarged",
   "upper limits of normal") within WINDOW words in its clause, nearest first; the state gives its value
   and its position is where negation / uncertainty cues are looked for.
3. A forward cue ("no", "may represent") acts on mentions after it, a backward cue ("is not seen",
   "cannot be excluded") on mentions before it, within the clause, when every hop from the cue to the
   mention, stepping over the mentions in between, is at most CUE_HOP words (list words such as "or",
   "and", "of", "the" and location words such as "right lower zone" not counted), so a cue reaches along a
   list ("no effusion, consolidation or pneumothorax") but not past unrelated words. The nearest acting cue
   decides: negation -> 0, uncertainty -> -1 (a negative state stays 0); no cue -> the mention's value
   (1 for a plain one).
4. CheXpert aggregation per class over its mentions: any 1 -> 1, else any -1 -> -1, else 0; unmentioned
   -> NaN. "heart failure"/"chf" is an Edema mention (as in CheXpert); stated positive or uncertain it also
   sets Cardiomegaly to -1 when Cardiomegaly is otherwise unmentioned (chexpert-labeler instead adds a -1
   to Cardiomegaly's list, which also turns an explicit 0 into -1). No Finding = 1 iff no class other than
   Support Devices is 1 or -1, else NaN.
Report F1 from these labels as "rule-CheXpert F1", not CheXbert F1.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

from dmx_jax.eval import chexpert_phrases as P

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)  # CheXpert train.csv column order (same tuple as data_pipelines.schema.CHEXPERT_LABELS)
HEART_FAILURE = "heart failure"
WINDOW = 6  # words a state may be away from its anatomy mention (other mentions and list words not counted)
CUE_HOP = 5  # words a cue may be away from its mention, or from the previous mention of a list it reaches along
_LIST_WORDS = frozenset({"or", "and", "nor", "of", "the", "a", "an", "any", "either", "to", "in", "is", "are"})
_FREE_WORDS = _LIST_WORDS | P.LOCATION_WORDS  # not counted when measuring how far a cue reaches
_WORD = re.compile(r"[a-z0-9]+(?:[-'/][a-z0-9]+)*")


def _compile(pattern: str) -> re.Pattern:
    return re.compile(rf"(?<![\w/-])(?:{pattern})(?![\w/-])")


_MENTIONS = (
    [(_compile(p), "mention", label) for label, ps in P.MENTIONS.items() for p in ps]
    + [(_compile(p), "anatomy", label) for label, ps in P.ANATOMY.items() for p in ps]
    + [(_compile(p), "blocker", "") for p in P.BLOCKERS]
    + [(_compile(p), "mention", HEART_FAILURE) for p in P.HEART_FAILURE]
)
_CUES = (
    [(_compile(p), 0.0, "forward") for p in P.NEGATION_FORWARD]
    + [(_compile(p), 0.0, "backward") for p in P.NEGATION_BACKWARD]
    + [(_compile(p), -1.0, "forward") for p in P.UNCERTAIN_FORWARD]
    + [(_compile(p), -1.0, "backward") for p in P.UNCERTAIN_BACKWARD]
    + [(_compile(p), None, "none") for p in P.PSEUDO]
)
_STATES = [(_compile(p), value) for value, ps in P.STATES.items() for p in ps]
_CLAUSE_END = re.compile("|".join([_compile(p).pattern for p in P.TERMINATORS] + list(P.CLAUSE_PUNCTUATION)))
_CLAUSE_END_AFTER = re.compile("|".join(P.CLAUSE_END_AFTER))
_SENTENCE_END = re.compile(r"(?<!\d)\.|\.(?!\d)|[?!\n]")


@dataclasses.dataclass(frozen=True)
class Mention:
    """One classified mention. start/end index the lower-cased text; clause is the text of its clause."""

    label: str
    value: float
    start: int
    end: int
    clause: str


@dataclasses.dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: object  # mention kind, cue polarity, or state value
    tag: object  # label, or the cue's set of directions


def _longest_first(spans: list[_Span], blocked: Sequence[_Span] = ()) -> list[_Span]:
    """Spans kept longest-first without overlap (nor overlap with `blocked`); equal spans of one kind merge tags."""
    kept: list[_Span] = []
    for s in sorted(spans, key=lambda s: (s.start - s.end, s.start)):
        if any(s.start < b.end and b.start < s.end for b in blocked):
            continue
        clash = [k for k in kept if s.start < k.end and k.start < s.end]
        if not clash:
            kept.append(s)
        elif (
            len(clash) == 1
            and (clash[0].start, clash[0].end, clash[0].kind) == (s.start, s.end, s.kind)
            and isinstance(s.tag, frozenset)
        ):
            kept[kept.index(clash[0])] = dataclasses.replace(clash[0], tag=clash[0].tag | s.tag)
    return sorted(kept, key=lambda s: s.start)


def _normalise(text: str) -> str:
    text = text.lower()
    return re.sub(r"\b(vs|e\.g|i\.e|approx)\.", lambda m: m.group(1).replace(".", "") + " ", text)


class _Document:
    """Clause ids and word distances for one lower-cased text."""

    def __init__(self, text: str, mentions: list[_Span]):
        self.text = text
        cuts = (
            {m.end() for m in _SENTENCE_END.finditer(text)}
            | {m.start() for m in _CLAUSE_END.finditer(text)}
            | {m.end() for m in _CLAUSE_END_AFTER.finditer(text)}
        )
        self.cuts = sorted(cuts)
        self.covered = mentions

    def clause(self, pos: int) -> int:
        return bisect.bisect_right(self.cuts, pos)

    def clause_text(self, pos: int) -> str:
        i = self.clause(pos)
        lo = self.cuts[i - 1] if i > 0 else 0
        hi = self.cuts[i] if i < len(self.cuts) else len(self.text)
        return self.text[lo:hi].strip(" .;:,\n")

    def words(self, a: int, b: int) -> int:
        """Words in text[a:b] that are neither list nor location words."""
        return sum(1 for w in _WORD.finditer(self.text, a, b) if w.group() not in _FREE_WORDS)

    def gap(self, a: int, b: int) -> int:
        """Words in text[a:b] outside mentions and not list words."""
        return sum(
            1
            for w in _WORD.finditer(self.text, a, b)
            if w.group() not in _LIST_WORDS and not any(m.start <= w.start() < m.end for m in self.covered)
        )

    def reach(self, a: int, b: int) -> int:
        """Longest hop, in words, from a to b stepping over the mentions in between (a cue reaches along a list)."""
        hops, pos = [], a
        for m in self.covered:
            if m.start >= pos and m.end <= b:
                hops.append(self.words(pos, m.start))
                pos = m.end
        hops.append(self.words(pos, b))
        return max(hops)


def _find(text: str, table) -> list[_Span]:
    return [_Span(m.start(), m.end(), kind, tag) for pattern, kind, tag in table for m in pattern.finditer(text)]


def extract_mentions(text: str) -> list[Mention]:
    """Every classified mention in `text` (heart-failure mentions included, label HEART_FAILURE)."""
    text = _normalise(text)
    mentions = _longest_first(_find(text, _MENTIONS))
    doc = _Document(text, mentions)
    cues = _longest_first(_find(text, [(p, pol, frozenset([d])) for p, pol, d in _CUES]), blocked=mentions)
    states = _longest_first(
        [_Span(m.start(), m.end(), value, None) for p, value in _STATES for m in p.finditer(text)], blocked=mentions
    )
    out = []
    for m in mentions:
        if m.kind == "blocker":
            continue
        anchor, value = m, 1.0
        if m.kind == "anatomy":
            state = _nearest_state(doc, m, states)
            if state is None:
                continue
            anchor, value = state, state.kind
        cue = _nearest_cue(doc, anchor, cues)
        if cue is not None and cue.kind is not None:
            value = 0.0 if cue.kind == 0.0 or value == 0.0 else -1.0
        out.append(Mention(m.tag, value, m.start, m.end, doc.clause_text(m.start)))
    return out


def _nearest_state(doc: _Document, m: _Span, states: list[_Span]) -> _Span | None:
    best, best_d = None, None
    for s in states:
        if doc.clause(s.start) != doc.clause(m.start):
            continue
        words = doc.gap(m.end, s.start) if s.start >= m.end else doc.gap(s.end, m.start)
        d = s.start - m.end if s.start >= m.end else m.start - s.end
        if words <= WINDOW and (best_d is None or d < best_d):
            best, best_d = s, d
    return best


def _nearest_cue(doc: _Document, anchor: _Span, cues: list[_Span]) -> _Span | None:
    best, best_d = None, None
    for c in cues:
        if doc.clause(c.start) != doc.clause(anchor.start):
            continue
        if "forward" in c.tag and c.end <= anchor.start and doc.reach(c.end, anchor.start) <= CUE_HOP:
            d = anchor.start - c.end
        elif "backward" in c.tag and c.start >= anchor.end and doc.reach(anchor.end, c.start) <= CUE_HOP:
            d = c.start - anchor.end
        else:  # pseudo cues ("no change in") have no direction: they only stop shorter cues matching inside them
            continue
        if best_d is None or d < best_d:
            best, best_d = c, d
    return best


def aggregate(mentions: Iterable[Mention]) -> np.ndarray:
    """[14] float32 CheXpert vector from classified mentions (the CheXpert aggregation rules)."""
    values: dict[str, set[float]] = {}
    for m in mentions:
        values.setdefault(m.label, set()).add(m.value)
        if m.label == HEART_FAILURE:
            values.setdefault("Edema", set()).add(m.value)
    out = np.full(len(CHEXPERT_LABELS), np.nan, dtype=np.float32)
    for i, label in enumerate(CHEXPERT_LABELS[1:], start=1):
        seen = values.get(label, set())
        if seen:
            out[i] = 1.0 if 1.0 in seen else (-1.0 if -1.0 in seen else 0.0)
    cardiomegaly = CHEXPERT_LABELS.index("Cardiomegaly")
    if np.isnan(out[cardiomegaly]) and values.get(HEART_FAILURE, set()) & {1.0, -1.0}:
        out[cardiomegaly] = -1.0
    findings = out[1 : CHEXPERT_LABELS.index("Support Devices")]
    if not np.any((findings == 1.0) | (findings == -1.0)):
        out[0] = 1.0
    return out


def chexpert_labels(texts: Sequence[str] | str) -> np.ndarray:
    """[N, 14] float32 labels in CheXpert train.csv column order (1, 0, -1, NaN); one string gives [1, 14]."""
    if isinstance(texts, str):
        texts = [texts]
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"chexpert_labels: texts[{i}] is {type(text).__name__}, expected str")
        rows.append(aggregate(extract_mentions(text)))
    return np.stack(rows) if rows else np.zeros((0, len(CHEXPERT_LABELS)), dtype=np.float32)
