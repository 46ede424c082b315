"""Report Arena: pairwise comparisons of systems' reports per study, judged in both presentation orders.

For every study, every pair of systems that reported on it and every judge, the judge sees the reference
report and the two candidates twice, once in each order. The pair's outcome:
- the same winner in both orders -> that system wins; TIE in both orders -> tie;
- anything else (the winner flips with the position, or a win in one order and a tie in the other) ->
  counted as a tie and recorded as inconsistent (position-bias statistics per judge);
- an unparseable answer or a failed call in either order -> the pair is left out for that judge (counted).
Each judge's outcomes are comparisons; several judges are combined by pooling their comparisons, and each
judge is also rated alone. Ratings: Bradley-Terry (ties as half wins) and Elo, with percentile bootstrap
CIs over studies, plus the win-rate matrix. Verdicts are cached on disk (see cache.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from dmx_jax.eval.arena import rating
from dmx_jax.eval.arena.cache import VerdictCache, cache_key
from dmx_jax.eval.arena.records import Judge, JudgeRequest, Report

RATING_METHOD = (
    "Bradley-Terry maximum likelihood, ties counted as half a win for each side (not Davidson), "
    "ridge 0.01; Elo K=4, base 10, scale 400, start 1000, mean of 16 shuffles; 95% percentile "
    "bootstrap CIs over studies"
)


def load_reports_jsonl(path: str | os.PathLike) -> dict[str, Report]:
    """{study_id: Report} from JSONL lines {"study_id": str, "report": str, "boxes": [[x0, y0, x1, y1], ...]?}."""
    out: dict[str, Report] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            for field, kind in (("study_id", str), ("report", str)):
                if not isinstance(row.get(field), kind):
                    raise ValueError(f"{where}: field {field!r} missing or not a string")
            try:
                boxes = tuple(tuple(float(v) for v in box) for box in row.get("boxes") or ())
            except (TypeError, ValueError):
                raise ValueError(f"{where}: field 'boxes' must be a list of [x0, y0, x1, y1]") from None
            if any(len(b) != 4 for b in boxes):
                raise ValueError(f"{where}: field 'boxes' must hold 4 numbers per box")
            if row["study_id"] in out:
                raise ValueError(f"{where}: duplicate study_id {row['study_id']!r}")
            out[row["study_id"]] = Report(row["report"], boxes)
    return out


@dataclasses.dataclass
class _Stats:
    pairs: int = 0
    consistent: int = 0
    inconsistent: int = 0
    left_out: int = 0
    first: int = 0
    second: int = 0
    ties: int = 0
    unparseable: int = 0
    errors: int = 0
    requests: int = 0
    cache_hits: int = 0


def _judge_all(
    judge: Judge, requests: list[tuple[str, str, str, str, JudgeRequest]], cache: VerdictCache | None, stats: _Stats
) -> dict[tuple[str, str, str, str], str | None]:
    """{(study, a, b, order): verdict or None}; cached verdicts reused, new answers (not failures) stored."""
    verdicts, todo = {}, []
    for study, a, b, order, request in requests:
        key = cache_key(judge.judge_id, study, a, b, order, judge.prompt_hash(request))
        record = cache.get(key) if cache is not None else None
        if record is not None:
            verdicts[(study, a, b, order)] = record["verdict"]
            stats.cache_hits += 1
        else:
            todo.append((key, (study, a, b, order), request))
    responses = judge.judge([t[2] for t in todo]) if todo else []
    stats.requests += len(todo)
    for (key, ident, _), response in zip(todo, responses):
        verdicts[ident] = response.verdict
        if response.error is not None:
            stats.errors += 1
            continue
        if cache is not None:
            cache.put(
                key,
                {
                    "judge_id": judge.judge_id,
                    "study_id": ident[0],
                    "systems": [ident[1], ident[2]],
                    "order": ident[3],
                    "verdict": response.verdict,
                    "raw": response.raw,
                },
            )
    for verdict in verdicts.values():
        if verdict is None:
            continue
        stats.first += verdict == "A"
        stats.second += verdict == "B"
        stats.ties += verdict == "TIE"
    stats.unparseable = sum(1 for v in verdicts.values() if v is None) - stats.errors
    return verdicts


def _outcome(ab: str | None, ba: str | None) -> tuple[float | None, bool]:
    """(score of system a, consistent) from the verdicts with a shown first (ab) and second (ba)."""
    if ab is None or ba is None:
        return None, False
    first = {"A": 1.0, "B": 0.0, "TIE": 0.5}[ab]
    second = {"A": 0.0, "B": 1.0, "TIE": 0.5}[ba]
    return (first, True) if first == second else (0.5, False)


def _ratings(comparisons: np.ndarray, study_index: np.ndarray, systems: list[str], n_bootstrap: int, seed: int) -> dict:
    p = len(systems)
    if len(comparisons) == 0:
        return {"n_comparisons": 0}
    theta = rating.bradley_terry(comparisons, p)
    elo = rating.elo(comparisons, p, seed=seed)
    ci = rating.bootstrap_ratings(comparisons, study_index, p, n=n_bootstrap, seed=seed)
    bt_elo, bt_elo_ci = rating.bt_to_elo_scale(theta), rating.bt_to_elo_scale(ci["bt"])
    table = {
        s: {
            "bt": float(theta[k]),
            "bt_ci": ci["bt"][k].tolist(),
            "bt_elo_scale": float(bt_elo[k]),
            "bt_elo_scale_ci": bt_elo_ci[k].tolist(),
            "elo": float(elo[k]),
            "elo_ci": ci["elo"][k].tolist(),
        }
        for k, s in enumerate(systems)
    }
    return {
        "n_comparisons": int(len(comparisons)),
        "ranking": [systems[k] for k in np.argsort(-theta)],
        "ratings": table,
        "win_rate": rating.win_rate_matrix(comparisons, p).tolist(),
    }


def run_arena(
    references: Mapping[str, Report],
    systems: Mapping[str, Mapping[str, Report]],
    judges: Sequence[Judge],
    *,
    cache: VerdictCache | str | os.PathLike | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """JSON-ready arena result: systems, judges (id, label, position-bias stats), combined and per-judge ratings."""
    names = sorted(systems)
    if len(names) < 2 or not judges:
        raise ValueError(f"run_arena: need >= 2 systems and >= 1 judge, got {names} and {len(judges)} judges")
    if cache is not None and not isinstance(cache, VerdictCache):
        cache = VerdictCache(cache)
    studies = sorted(s for s in references if sum(s in systems[n] for n in names) >= 2)
    study_pos = {s: k for k, s in enumerate(studies)}
    result = {"method": RATING_METHOD, "systems": names, "n_studies": len(studies), "judges": [], "per_judge": {}}
    pooled, pooled_study = [], []
    for judge in judges:
        stats = _Stats()
        requests = []
        for study in studies:
            have = [n for n in names if study in systems[n]]
            for a, b in itertools.combinations(have, 2):
                ra, rb, ref = systems[a][study], systems[b][study], references[study]
                requests.append((study, a, b, "AB", JudgeRequest(study, ref, ra, rb)))
                requests.append((study, a, b, "BA", JudgeRequest(study, ref, rb, ra)))
        verdicts = _judge_all(judge, requests, cache, stats)
        comparisons, study_index = [], []
        for study, a, b, _order, _ in requests[::2]:
            score, consistent = _outcome(verdicts[(study, a, b, "AB")], verdicts[(study, a, b, "BA")])
            stats.pairs += 1
            if score is None:
                stats.left_out += 1
                continue
            stats.consistent += consistent
            stats.inconsistent += not consistent
            comparisons.append((names.index(a), names.index(b), score))
            study_index.append(study_pos[study])
        decisive = stats.first + stats.second
        bias = dataclasses.asdict(stats) | {
            "first_position_win_rate": stats.first / decisive if decisive else None,
            "inconsistent_rate": stats.inconsistent / max(stats.pairs - stats.left_out, 1),
        }
        result["judges"].append({"id": judge.judge_id, "label": judge.label, "position_bias": bias})
        comparisons = np.asarray(comparisons, dtype=np.float64).reshape(-1, 3)
        result["per_judge"][judge.judge_id] = _ratings(comparisons, np.asarray(study_index), names, n_bootstrap, seed)
        pooled.append(comparisons)
        pooled_study.extend(study_index)
    result["combined"] = _ratings(np.concatenate(pooled), np.asarray(pooled_study), names, n_bootstrap, seed)
    result["combined"]["judges"] = [j["label"] for j in result["judges"]]
    return result
