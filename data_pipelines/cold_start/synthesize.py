"""Cold-start reasoning samples from a teacher model (paper.md §4: ~3.9K high-quality grounded traces).

For each Example the teacher sees the question, the ground-truth answer, the finding boxes and the image
size in the resized model frame, and writes numbered steps citing boxes. Replies are cached, validated
(trace.py) and either accepted or counted under one rejection reason. Accepted Examples keep their task;
their target and meta['reasoning'] are the trace with boxes in the STORED image's pixels (the Example
convention; data_pipelines.formatting rescales them to exactly the teacher's resized coordinates), with the
ground-truth target verbatim inside \\boxed{}. meta also gets 'reasoning_resized' (the trace as the model
sees it), 'answer' (the original target), 'teacher_answer' (the teacher's boxed text) and 'teacher' (model).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from data_pipelines.cold_start import trace as tr
from data_pipelines.cold_start.cache import ReplyCache, cache_key
from data_pipelines.cold_start.client import FAILURES, Completion, TeacherClient
from data_pipelines.cold_start.config import TeacherConfig
from data_pipelines.cold_start.prompt import ResizeFn, Size, box_frame, load_template, messages, teacher_fields
from data_pipelines.schema import Example

log = logging.getLogger(__name__)
REJECTIONS = FAILURES + ("bad_format", "wrong_answer", "box_out_of_bounds")
TRANSPORT_FAILURES = ("timeout", "rate_limited", "http_error")  # re-requested when retry_failed=True


@dataclasses.dataclass(frozen=True)
class SynthesisResult:
    accepted: list[Example]
    summary: dict  # examples, accepted, rejected {reason: count}, requests, cache_hits, unique_prompts, teacher
    records: list[dict]  # per input example: example_id, outcome ('accepted' or a reason), detail


@dataclasses.dataclass(frozen=True)
class _Job:
    example: Example
    size: Size
    resized: Size
    fields: dict
    key: str


def _image_ids(example: Example) -> list[str]:
    return [
        os.fspath(i)
        if isinstance(i, (str, os.PathLike))
        else hashlib.sha256(np.ascontiguousarray(i).tobytes()).hexdigest()
        for i in example.images
    ]


def _plan(example: Example, config: TeacherConfig, template, resized_size_fn: ResizeFn | None) -> _Job:
    size, resized = box_frame(example, resized_size_fn)
    fields = teacher_fields(example, size, resized)
    key = cache_key(
        model=config.model,
        template_text=template.text,
        example_id=example.example_id,
        prompt=example.prompt,
        target=example.target,
        user_text=template.user.safe_substitute(fields),
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        images=_image_ids(example) if config.send_images else None,
    )
    return _Job(example, size, resized, fields, key)


def _request(job: _Job, client: TeacherClient, template, config: TeacherConfig, resized_size_fn) -> dict:
    try:
        msgs = messages(
            job.example, template, job.fields, send_images=config.send_images, resized_size_fn=resized_size_fn
        )
    except (OSError, ValueError) as e:  # an unreadable image
        raise ValueError(f"example {job.example.example_id!r}: cannot build the teacher request: {e}") from e
    reply: Completion = client.complete(msgs, label=f"example {job.example.example_id}")
    return {
        "example_id": job.example.example_id,
        "model": config.model,
        "content": reply.content,
        "failure": reply.failure,
        "detail": reply.detail,
        "requests": reply.requests,
    }


def _judge(job: _Job, record: dict, config: TeacherConfig) -> tuple[str, str, Example | None]:
    """(outcome, detail, accepted Example or None) for one example and its teacher reply."""
    if record.get("failure"):
        return record["failure"], record.get("detail", ""), None
    parsed, why = tr.parse_reply(record.get("content") or "")
    if parsed is None:
        return "bad_format", why, None
    if not tr.boxes_in_bounds(parsed.boxes, job.resized):
        return "box_out_of_bounds", f"boxes {list(parsed.boxes)} vs image {job.resized[0]}x{job.resized[1]}", None
    ex = job.example
    if not tr.answers_agree(parsed.answer, job.fields["answer"], ex.task, config.long_answer_min_words):
        return "wrong_answer", f"teacher {parsed.answer[:120]!r} vs truth {job.fields['answer'][:120]!r}", None
    stored = tr.render(tr.to_stored_frame(parsed.body, job.size, job.resized), ex.target)
    meta = {
        **ex.meta,
        "reasoning": stored,
        "reasoning_resized": tr.render(parsed.body, job.fields["answer"]),
        "answer": ex.target,
        "teacher_answer": parsed.answer,
        "teacher": config.model,
    }
    return "accepted", "", dataclasses.replace(ex, target=stored, meta=meta)


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ


def synthesize(
    examples: Iterable[Example],
    config: TeacherConfig,
    *,
    cache_dir: str | os.PathLike,
    resized_size_fn: ResizeFn | None = None,
    retry_failed: bool = False,
    progress: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SynthesisResult:
    """Teacher traces for `examples`, validated and cached.

    resized_size_fn: stored (w, h) -> model input (w, h); default boxes.qwen_input_size (max 262,144 px).
    retry_failed: re-request examples whose cached call ended in a timeout, rate limit or HTTP error (by
      default every cached reply, failures included, is reused, so a rerun issues zero requests).
    progress: a tqdm bar on stderr; None: only on a terminal and outside pytest.
    sleep: the backoff wait (tests pass a recorder).
    """
    template = load_template(config.prompt_template)
    client = TeacherClient(config, sleep=sleep)
    cache = ReplyCache(cache_dir)
    jobs = [_plan(ex, config, template, resized_size_fn) for ex in examples]
    replies: dict[str, dict] = {}
    todo: dict[str, _Job] = {}
    for job in jobs:
        if job.key in replies or job.key in todo:
            continue
        cached = cache.get(job.key)
        if cached is not None and not (retry_failed and cached.get("failure") in TRANSPORT_FAILURES):
            replies[job.key] = cached
        else:
            todo[job.key] = job
    cache_hits = len(replies)
    stale = sum(r.get("failure") in TRANSPORT_FAILURES for r in replies.values())
    if stale:
        log.warning(
            "reusing %d cached teacher failures (timeouts / HTTP errors); pass retry_failed=True "
            "(CLI --retry-failed) to request them again",
            stale,
        )
    requests, bad_inputs = 0, []
    bar = None
    if todo and _progress_enabled(progress):
        bar = tqdm(total=len(todo), desc=f"teacher {config.model}", unit="req")
    with concurrent.futures.ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        futures = {
            pool.submit(_request, job, client, template, config, resized_size_fn): key for key, job in todo.items()
        }
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            try:
                record = future.result()
            except ValueError as e:  # bad input: finish (and cache) the other requests first, then raise
                bad_inputs.append(str(e))
            else:
                requests += record["requests"]
                cache.put(key, record)
                replies[key] = record
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if bad_inputs:
        raise ValueError("; ".join(bad_inputs))

    accepted, records = [], []
    rejected = dict.fromkeys(REJECTIONS, 0)
    for job in jobs:
        outcome, detail, example = _judge(job, replies[job.key], config)
        records.append({"example_id": job.example.example_id, "outcome": outcome, "detail": detail})
        if example is not None:
            accepted.append(example)
        else:
            rejected[outcome] += 1
    summary = {
        "teacher": config.model,
        "examples": len(jobs),
        "accepted": len(accepted),
        "rejected": rejected,
        "requests": requests,
        "cache_hits": cache_hits,
        "unique_prompts": len(replies),
    }
    log.info(
        "cold-start teacher %s: %d/%d accepted, rejected %s, %d requests, %d cache hits",
        config.model,
        len(accepted),
        len(jobs),
        {k: v for k, v in rejected.items() if v},
        requests,
        cache_hits,
    )
    return SynthesisResult(accepted, summary, records)
