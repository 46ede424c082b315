"""Evaluate one stage on held-out prompts: greedy generation, then VQA, grounding, report and label scores."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.formatting import parse_answer
from dmx_jax.eval import (
    bootstrap_ci,
    box_iou,
    chexpert_f1,
    chexpert_labels,
    grounding_sample_scores,
    grounding_scores,
    nlg_sample_scores,
    nlg_scores,
    summarise,
    vqa_sample_score,
    vqa_scores,
)
from dmx_jax.eval.paired import paired_by_key
from dmx_jax.sampling.generate import PROMPT_KEYS, Decoding, generate_arrays
from dmx_jax.sharding import batch_shards, host_array
from experiments.stages import place_batch

_BOX = re.compile(r"\[(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\]")


EVAL_BATCH = 16  # prompts per evaluation generate call (one compiled shape per prompt length and budget)


def eval_batch_size(mesh=None) -> int:
    """Prompts per generate call on `mesh`: EVAL_BATCH rounded up to whole rows on each of its batch shards."""
    n = 1 if mesh is None else batch_shards(mesh)
    return -(-EVAL_BATCH // n) * n


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where evaluation prompts decode: batch_size prompts per generate call, put on devices by place(host
    chunk) -> arrays (None: the default device, every row there)."""

    batch_size: int = EVAL_BATCH
    place: Callable[[dict], dict] | None = None

    @classmethod
    def on(cls, mesh) -> Placement:
        """Rows split over the mesh's batch shards (each chip decodes its own), weights as the stage left them."""
        return cls(eval_batch_size(mesh), functools.partial(place_batch, mesh=mesh))


def eval_decoding(max_new_tokens: int, stop_id: int, pad_id: int) -> Decoding:
    """Greedy decoding of held-out prompts: what evaluation runs and the fit check's eval row compiles."""
    return Decoding(max_new_tokens, stop_token_ids=(stop_id,), pad_id=pad_id)


def generate_texts(
    graphdef,
    params,
    arrays: dict,
    tokenizer,
    *,
    max_new_tokens: int,
    placement: Placement = Placement(),
) -> list[str]:
    """Greedy completions for left-padded prompt arrays, in chunks of placement.batch_size (one compiled shape)
    placed by placement.place (Placement.on(mesh): rows split over the mesh's batch shards)."""
    batch_size, place = placement.batch_size, placement.place
    n = arrays["input_ids"].shape[0]
    out = []
    for s in range(0, n, batch_size):
        idx = np.arange(s, s + batch_size) % n  # pad the last chunk by wrapping; extra rows dropped
        part = {
            k: jax.tree.map(lambda x: np.asarray(x)[idx], arrays[k])
            for k in (*PROMPT_KEYS, "pixel_values", "vision_inputs")
            if k in arrays
        }
        part = place(part) if place is not None else jax.tree.map(jnp.asarray, part)
        toks, _, cmask = generate_arrays(
            graphdef,
            params,
            part,
            jax.random.key(0),
            eval_decoding(max_new_tokens, tokenizer.im_end_id, tokenizer.pad_id),
        )
        toks, cmask = host_array(toks), host_array(cmask)
        for r in range(min(batch_size, n - s)):
            ids = [int(t) for t, m in zip(toks[r], cmask[r]) if m and t != tokenizer.im_end_id]
            out.append(tokenizer.decode(ids))
    return out


def report_text_scores(preds: list[str], refs: list[str], n_bootstrap: int) -> dict:
    """Corpus BLEU-1..4 / ROUGE-L / CIDEr-D, with 95% bootstrap CIs (corpus metrics recomputed per resample)."""
    corpus = nlg_scores(preds, refs, meteor=False)
    per = nlg_sample_scores(preds, refs, meteor=False)
    out = {k: {"mean": v} for k, v in corpus.items()}
    out["rouge_l"]["ci"] = list(bootstrap_ci(per["rouge_l"], n=n_bootstrap))  # ROUGE-L is a sample mean
    idx = np.arange(len(preds))
    lo_hi = bootstrap_ci(
        idx,
        lambda i: nlg_scores([preds[j] for j in i], [refs[j] for j in i], meteor=False)["bleu_4"],
        n=min(n_bootstrap, 200),
    )
    out["bleu_4"]["ci"] = list(lo_hi)
    return out


def report_label_scores(preds: list[str], refs: list[str], n_bootstrap: int) -> dict:
    """rule-CheXpert micro/macro F1 (14 and 5 labels) with 95% bootstrap CIs over reports."""
    p, r = chexpert_labels(preds), chexpert_labels(refs)
    full = chexpert_f1(p, r)
    out = {}
    for key in ("micro_f1_14", "macro_f1_14", "micro_f1_5", "macro_f1_5"):
        out[key] = {
            "mean": full[key],
            "ci": list(bootstrap_ci((p, r), lambda a, b, k=key: chexpert_f1(a, b)[k], n=min(n_bootstrap, 500))),
        }
    out["labeler"] = "rule-CheXpert (dmx_jax.eval.chexpert_labeler), not CheXbert"
    return out


def printable(text: str) -> str:
    """Text safe for plot titles: control characters (untrained models emit them) shown as '?'."""
    return "".join(c if c.isprintable() or c == "\n" else "?" for c in text)


def boxes_in(text: str) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in m.groups()) for m in _BOX.finditer(text)]


VQA_TASKS = ("vqa", "difference", "referring", "classification")
IMAGE_TASKS = VQA_TASKS + ("grounding",)


def vqa_grounding_metrics(answers: list[str], rows: list[dict], n_bootstrap: int) -> dict:
    """{'vqa_score', 'grounding'} (each present when the rows hold such tasks): VQA scores over VQA_TASKS,
    grounding IoU of the answer's first box (none cited: an empty box) against the truth boxes."""
    out: dict = {}
    vqa = [i for i, r in enumerate(rows) if r["task"] in VQA_TASKS]
    if vqa:
        out["vqa_score"] = vqa_scores(
            [answers[i] for i in vqa],
            [rows[i]["target"] for i in vqa],
            question_types=[rows[i]["question_type"] for i in vqa],
            n_bootstrap=n_bootstrap,
        )["overall"]
    grd = [i for i, r in enumerate(rows) if r["task"] == "grounding"]
    if grd:
        pred = [boxes_in(answers[i])[:1] or [(0.0, 0.0, 0.0, 0.0)] for i in grd]
        out["grounding"] = grounding_scores(pred, [rows[i]["boxes"] for i in grd], n_bootstrap=n_bootstrap)["overall"]
    return out


def _rolled_images(arrays: dict, idx: np.ndarray, image_token_id: int) -> dict:
    """Rows `idx` of a prompt batch, each row given the images of the next row with as many image tokens
    (so a two-image difference question gets another two-image pair); same shapes, one compiled program."""
    sub = jax.tree.map(lambda x: np.asarray(x)[idx], arrays)
    counts = (sub["input_ids"] == image_token_id).sum(axis=1)
    source = np.arange(len(idx))
    for c in np.unique(counts):
        same = np.flatnonzero(counts == c)
        source[same] = np.roll(same, 1)
    for key in ("pixel_values", "vision_inputs"):
        sub[key] = jax.tree.map(lambda x: x[source], sub[key])
    return sub


def example_scores(records: list[dict], answer_key: str = "answer") -> dict[str, dict[str, float]]:
    """Per-example scores of evaluation records, {metric: {example_id: value}}, with the definitions of
    vqa_grounding_metrics: "vqa_score" over VQA_TASKS, "grounding.miou" / "grounding.acc_at_0_5" of the answer's
    first box (none: an empty box). answer_key: the answer field ("control_answer": the images-swapped one)."""
    out: dict[str, dict[str, float]] = {"vqa_score": {}, "grounding.miou": {}, "grounding.acc_at_0_5": {}}
    for r in records:
        if answer_key not in r:
            continue
        if r["task"] in VQA_TASKS:
            out["vqa_score"][r["example_id"]] = vqa_sample_score(r[answer_key], r["target"])
        elif r["task"] == "grounding":
            s = grounding_sample_scores(boxes_in(r[answer_key])[:1] or [(0.0, 0.0, 0.0, 0.0)], r["boxes_true"])
            out["grounding.miou"][r["example_id"]] = s["miou"]
            out["grounding.acc_at_0_5"][r["example_id"]] = s["acc_at_0_5"]
    return {k: v for k, v in out.items() if v}


def citation_stats(records: list[dict], n_bootstrap: int = 200) -> dict:
    """Over the VQA and grounding outputs: the share citing at least one box anywhere in the output
    ("cite_rate"), and, over the citing outputs of prompts with truth boxes, the mean over the cited boxes of
    each box's best IoU with a truth box ("cited_box_iou"); over the reasoning answers to grounding prompts, the
    share whose answer box is one the trace cites ("trace_box_copy_rate")."""
    recs = [r for r in records if r["task"] in IMAGE_TASKS]
    cites = [bool(boxes_in(r["output"])) for r in recs]
    ious = [
        float(box_iou(np.asarray(boxes_in(r["output"])), np.asarray(r["boxes_true"], np.float64)).max(1).mean())
        for r, c in zip(recs, cites)
        if c and r["boxes_true"]
    ]
    out = {
        "cite_rate": summarise(np.asarray(cites, np.float64), n_bootstrap),
        "cited_box_iou": summarise(np.asarray(ious, np.float64), n_bootstrap),
    }
    copies = [trace_box_copied(r["output"]) for r in records if r["task"] == "grounding" and "</think>" in r["output"]]
    if copies:
        out["trace_box_copy_rate"] = summarise(np.asarray(copies, np.float64), n_bootstrap)
    return out


def trace_box_copied(output: str) -> bool:
    """Whether the answer after </think> gives, as its first box, a box that the <think> trace cites."""
    trace, _, answer = output.partition("</think>")
    first = boxes_in(answer)[:1]
    return bool(first) and first[0] in boxes_in(trace)


def image_control(
    graphdef, params, groups, tokenizer, *, n_bootstrap: int, placement: Placement = Placement()
) -> tuple[dict, dict[str, str]]:
    """VQA score and grounding mIoU with every image-dependent prompt given another prompt's image, and the
    swapped-image answer per example id.

    Scores near the real-image ones mean the answers come from the text alone (priors of the question)."""
    texts, rows = [], []
    for arrays, group_rows, max_new_tokens in groups:
        idx = np.array([i for i, r in enumerate(group_rows) if r["task"] in IMAGE_TASKS])
        if len(idx) < 2:
            continue
        texts += generate_texts(
            graphdef,
            params,
            _rolled_images(arrays, idx, tokenizer.image_pad_id),
            tokenizer,
            max_new_tokens=max_new_tokens,
            placement=placement,
        )
        rows += [group_rows[i] for i in idx]
    answers = [parse_answer(t) for t in texts]
    return vqa_grounding_metrics(answers, rows, n_bootstrap), {r["example_id"]: a for r, a in zip(rows, answers)}


def image_drop(records: list[dict], n_bootstrap: int) -> dict:
    """Paired real - swapped differences per metric over the examples the control answered:
    {metric: {"mean", "ci", "n", "excludes_zero"}}; a positive drop means the answers use the image."""
    real, swapped = example_scores(records), example_scores(records, "control_answer")
    return {m: paired_by_key(swapped[m], real[m], n_bootstrap) for m in real if m in swapped}


def image_drop_by_question_type(records: list[dict], n_bootstrap: int) -> dict:
    """The VQA part of image_drop per question type (classification prompts: "classification"):
    {type: {"real", "swapped": mean VQA scores, "drop": paired real - swapped}} over the examples the control
    answered. Shows which kinds of question read the image; the overall drop can hide one that does."""
    real = example_scores(records).get("vqa_score", {})
    swapped = example_scores(records, "control_answer").get("vqa_score", {})
    qtype = {r["example_id"]: r["question_type"] or r["task"] for r in records if r["task"] in VQA_TASKS}
    out = {}
    for t in sorted({qtype[i] for i in swapped if i in real}):
        ids = [i for i in swapped if i in real and qtype[i] == t]
        out[t] = {
            "real": float(np.mean([real[i] for i in ids])),
            "swapped": float(np.mean([swapped[i] for i in ids])),
            "drop": paired_by_key({i: swapped[i] for i in ids}, {i: real[i] for i in ids}, n_bootstrap),
        }
    return out


def example_record(row: dict, output: str, answer: str) -> dict:
    """One eval/<stage>.json record: a held-out row's metadata with the generated output and its parsed answer."""
    return {
        "example_id": row["example_id"],
        "task": row["task"],
        "question_type": row["question_type"],
        "output": output,
        "answer": answer,
        "target": row["target"],
        "boxes_true": row["boxes"],
        "image_size": row["image_size"],
    }


def evaluate_stage(
    graphdef,
    params,
    groups,
    tokenizer,
    *,
    n_bootstrap: int = 200,
    format_ids: set | None = None,
    control: bool = False,
    placement: Placement = Placement(),
) -> tuple[dict, list[dict]]:
    """groups: [(prompt arrays, rows, max_new_tokens)] (one compiled shape each) -> (metrics, per-example records).

    Answers are the last \\boxed{} (else the text after </think>, else the whole output).
    format_ids: example ids of the reasoning tasks; the grounded-format rate is taken over their outputs
    (report prompts are answered in plain text by design), over every output when None.
    control: add metrics["image_control"], the VQA and grounding scores with images swapped between prompts,
    its "drop" (paired real - swapped per metric, with CIs) and "drop_by_question_type" (VQA only); records get
    the swapped "control_answer".
    metrics["citations"]: share of image-task outputs citing a box and the IoU of the cited boxes.
    placement: where the prompts decode (Placement.on(mesh): split over the mesh's batch shards).
    """
    texts, rows = [], []
    for arrays, group_rows, max_new_tokens in groups:
        texts += generate_texts(
            graphdef,
            params,
            arrays,
            tokenizer,
            max_new_tokens=max_new_tokens,
            placement=placement,
        )
        rows += group_rows
    answers = [parse_answer(t) for t in texts]
    records = [example_record(r, t, a) for r, t, a in zip(rows, texts, answers)]
    metrics = vqa_grounding_metrics(answers, rows, n_bootstrap)
    rep = [i for i, r in enumerate(rows) if r["task"] in ("findings", "impression")]
    if rep:
        preds = [answers[i].lower() or "empty" for i in rep]
        refs = [rows[i]["target"].lower() for i in rep]
        metrics["report_nlg"] = report_text_scores(preds, refs, n_bootstrap)
        metrics["report_label_f1"] = report_label_scores(preds, refs, n_bootstrap)
    # grounded reasoning: share of outputs in the think-then-boxed format that cite at least one box
    fmt = [
        bool(re.search(r"<think>.*\[\d+, \d+, \d+, \d+\].*</think>.*\\boxed\{", t, re.S))
        for t, r in zip(texts, rows)
        if format_ids is None or r["example_id"] in format_ids
    ]
    metrics["grounded_format_rate"] = float(np.mean(fmt)) if fmt else 0.0
    metrics["citations"] = citation_stats(records, n_bootstrap)
    if control:
        metrics["image_control"], swapped = image_control(
            graphdef, params, groups, tokenizer, n_bootstrap=n_bootstrap, placement=placement
        )
        for rec in records:
            if rec["example_id"] in swapped:
                rec["control_answer"] = swapped[rec["example_id"]]
        metrics["image_control"]["drop"] = image_drop(records, n_bootstrap)
        metrics["image_control"]["drop_by_question_type"] = image_drop_by_question_type(records, n_bootstrap)
    return metrics, records
