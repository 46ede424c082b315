"""Arena judges: an OpenAI-compatible chat endpoint (stdlib HTTP only) and an offline rubric judge."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import logging
import os
import string
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np

from dmx_jax.eval.arena.records import JudgeRequest, JudgeResponse, Report, parse_verdict
from dmx_jax.eval.chexpert_labeler import CHEXPERT_LABELS, extract_mentions
from dmx_jax.eval.grounding import grounding_sample_scores

log = logging.getLogger(__name__)
PROMPT_FILE = "judge_prompt.txt"
_SPLIT = "---USER---"


def load_prompt_template(path: str | os.PathLike | None = None) -> tuple[string.Template, string.Template]:
    """(system, user) templates with ${reference}, ${report_a}, ${report_b}; default: the packaged file."""
    if path is not None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = resources.files("dmx_jax.eval.arena").joinpath(PROMPT_FILE).read_text(encoding="utf-8")
    if _SPLIT not in text:
        raise ValueError(f"{path or PROMPT_FILE}: missing the {_SPLIT} line between system and user parts")
    system, user = text.split(_SPLIT, 1)
    return string.Template(system.strip()), string.Template(user.strip())


def _sha256(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class OpenAICompatibleJudge:
    """POST {base_url}/chat/completions per request; retries timeouts, connection errors, 429 and 5xx with
    exponential backoff (Retry-After honoured, capped). The API key is read from `api_key_env` at call time,
    sent only in the Authorization header, and never logged or cached."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "DMX_JUDGE_API_KEY",
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
        prompt_path: str | os.PathLike | None = None,
        label: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("OpenAICompatibleJudge: need concurrency >= 1, max_retries >= 0, timeout > 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.temperature, self.max_tokens = temperature, max_tokens
        self.system_template, self.user_template = load_prompt_template(prompt_path)
        self.judge_id = f"openai-compatible:{model}@{base_url.rstrip('/')}"
        self.label = label or f"LLM judge {model}"
        self._sleep = sleep

    def payload(self, request: JudgeRequest) -> dict:
        fields = {
            "reference": request.reference.render(),
            "report_a": request.report_a.render(),
            "report_b": request.report_b.render(),
        }
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "messages": [
                {"role": "system", "content": self.system_template.safe_substitute(fields)},
                {"role": "user", "content": self.user_template.safe_substitute(fields)},
            ],
        }

    def prompt_hash(self, request: JudgeRequest) -> str:
        return _sha256(self.payload(request))

    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * (2**attempt)
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_s)

    def _one(self, request: JudgeRequest) -> JudgeResponse:
        body = json.dumps(self.payload(request)).encode()
        problem = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return _response_from_body(resp.read())
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if e.code != 429 and e.code < 500:
                    log.warning("judge %s study %s: %s, not retried", self.judge_id, request.study_id, problem)
                    return JudgeResponse(None, "", error=problem)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                problem = f"{type(e).__name__}: {reason}"
            if attempt < self.max_retries:
                delay = self._backoff(attempt, retry_after)
                log.warning(
                    "judge %s study %s: %s; retry %d/%d in %.2fs",
                    self.judge_id,
                    request.study_id,
                    problem,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                self._sleep(delay)
        log.error(
            "judge %s study %s: giving up after %d attempts (%s)",
            self.judge_id,
            request.study_id,
            self.max_retries + 1,
            problem,
        )
        return JudgeResponse(None, "", error=f"{problem} after {self.max_retries + 1} attempts")


def _response_from_body(body: bytes) -> JudgeResponse:
    """Verdict from a chat-completions body; any malformed body is an unparseable answer, not a crash."""
    text = body.decode("utf-8", errors="replace")
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError):
        return JudgeResponse(None, text[:2000])
    return JudgeResponse(parse_verdict(content), content)


# ------------------------------------------------------------------------------------------ rubric judge

_SIDES = {"left": "left", "right": "right", "bilateral": "bilateral", "bibasilar": "bilateral", "both": "bilateral"}
# severity / size words -> level 1 (mild) .. 3 (severe), looked up in a finding's clause
SEVERITY = {
    "trace": 1,
    "tiny": 1,
    "minimal": 1,
    "mild": 1,
    "small": 1,
    "subtle": 1,
    "slight": 1,
    "moderate": 2,
    "medium": 2,
    "severe": 3,
    "large": 3,
    "marked": 3,
    "extensive": 3,
    "massive": 3,
    "substantial": 3,
}


def _findings(text: str) -> dict[str, dict]:
    """{class: {value, sides, severity}} of the positive (1) / uncertain (-1) mentions of `text` (a class
    stated positive anywhere counts as positive); sides and severity levels come from the mentions' clauses."""
    out: dict[str, dict] = {}
    for m in extract_mentions(text):
        if m.value == 0.0 or m.label not in CHEXPERT_LABELS:
            continue
        words = m.clause.replace("-", " ").split()
        sides = {_SIDES[w] for w in words if w in _SIDES}
        if {"left", "right"} <= sides:
            sides = {"bilateral"}
        f = out.setdefault(m.label, {"value": m.value, "sides": set(), "severity": set()})
        f["value"] = max(f["value"], m.value)  # 1 beats -1
        f["sides"] |= sides
        f["severity"] |= {SEVERITY[w] for w in words if w in SEVERITY}
    return out


def _finding_sides(text: str) -> set[tuple[str, str]]:
    """(class, side) of positive / uncertain mentions whose clause names a side."""
    return {(k, s) for k, f in _findings(text).items() for s in f["sides"]}


def _set_f1(a: set, b: set) -> float:
    return 1.0 if not a and not b else 2 * len(a & b) / (len(a) + len(b))


def _label_f1(ref: dict, cand: dict) -> float:
    """Soft F1 over the findings either report states: a shared finding counts 1 when both state it the same
    way (positive / uncertain), 0.5 when one hedges; two reports stating no finding agree fully."""
    if not ref and not cand:
        return 1.0
    match = sum(1.0 if ref[k]["value"] == cand[k]["value"] else 0.5 for k in ref.keys() & cand.keys())
    return 2 * match / (len(ref) + len(cand))


def _severity(ref: dict, cand: dict) -> float | None:
    """Mean agreement of severity words on the findings both state where either grades it: 1 same level,
    0.5 one level apart or graded in one report only, 0 otherwise; None when no shared finding is graded."""
    scores = []
    for k in ref.keys() & cand.keys():
        a, b = ref[k]["severity"], cand[k]["severity"]
        if not a and not b:
            continue
        if not a or not b:
            scores.append(0.5)
            continue
        gap = min(abs(x - y) for x in a for y in b)
        scores.append(1.0 if gap == 0 else 0.5 if gap == 1 else 0.0)
    return float(np.mean(scores)) if scores else None


class RubricJudge:
    """Offline, deterministic judge grading partial agreement with the reference: rule-CheXpert findings
    (soft F1, negation and uncertainty from `chexpert_labeler`), the finding sides, severity words and box
    IoU; the higher weighted score wins, a tie only when the scores differ by at most `tie_margin`."""

    label = "offline rubric judge"

    def __init__(
        self,
        label_weight: float = 0.5,
        side_weight: float = 0.15,
        severity_weight: float = 0.15,
        box_weight: float = 0.2,
        tie_margin: float = 1e-9,
    ):
        self.weights = {"labels": label_weight, "sides": side_weight, "severity": severity_weight, "boxes": box_weight}
        self.tie_margin = tie_margin
        self.judge_id = f"rubric-v2:{label_weight:g}/{side_weight:g}/{severity_weight:g}/{box_weight:g}/{tie_margin:g}"

    def components(self, candidate: Report, reference: Report) -> dict[str, float]:
        """{labels, sides?, severity?, boxes?, total}: sides only when either report names a side of a finding,
        severity only when a finding both state is graded in either, boxes only when the reference has boxes;
        total is the weighted mean of the components present."""
        ref, cand = _findings(reference.text), _findings(candidate.text)
        parts = {"labels": _label_f1(ref, cand)}
        ref_sides = {(k, s) for k, f in ref.items() for s in f["sides"]}
        cand_sides = {(k, s) for k, f in cand.items() for s in f["sides"]}
        if ref_sides or cand_sides:
            parts["sides"] = _set_f1(ref_sides, cand_sides)
        sev = _severity(ref, cand)
        if sev is not None:
            parts["severity"] = sev
        if reference.boxes:
            parts["boxes"] = grounding_sample_scores(list(candidate.boxes), list(reference.boxes))["miou"]
        weight = sum(self.weights[k] for k in parts)
        parts["total"] = sum(self.weights[k] * v for k, v in parts.items()) / weight
        return parts

    def prompt_hash(self, request: JudgeRequest) -> str:
        return _sha256(
            [self.judge_id, request.reference.render(), request.report_a.render(), request.report_b.render()]
        )

    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        out = []
        for r in requests:
            a = self.components(r.report_a, r.reference)["total"]
            b = self.components(r.report_b, r.reference)["total"]
            verdict = "TIE" if abs(a - b) <= self.tie_margin else ("A" if a > b else "B")
            out.append(JudgeResponse(verdict, f"{self.label}: A {a:.4f}, B {b:.4f}\nVERDICT: {verdict}"))
        return out
