"""Evaluate one stage on held-out prompts: greedy generation, then VQA, grounding, report and label scores."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.formatting import parse_answer
from dmx_jax.eval import grounding_scores, nlg_scores, rule_chexpert_f1, vqa_scores
from dmx_jax.sampling.generate import _generate

_BOX = re.compile(r"\[(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\]")


def generate_texts(graphdef, params, arrays: dict, tokenizer, *, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions for left-padded prompt arrays (chunks of batch_size, one compiled shape)."""
    n = arrays["input_ids"].shape[0]
    out = []
    for s in range(0, n, batch_size):
        idx = np.arange(s, s + batch_size) % n           # pad the last chunk by wrapping; extra rows dropped
        part = jax.tree.map(lambda x: jnp.asarray(x[idx]), arrays)
        toks, _, cmask = _generate(graphdef, params, part["input_ids"], jnp.swapaxes(part["positions"], 0, 1),
                                   part["attention_mask"], part["deltas"].reshape(-1, 1), part["pixel_values"],
                                   part["vision_inputs"], jax.random.key(0), max_new_tokens=max_new_tokens,
                                   temperature=0.0, top_k=0, top_p=1.0, stop_token_ids=(tokenizer.im_end_id,),
                                   pad_id=tokenizer.pad_id)
        toks, cmask = np.asarray(toks), np.asarray(cmask)
        for r in range(min(batch_size, n - s)):
            ids = [int(t) for t, m in zip(toks[r], cmask[r]) if m and t != tokenizer.im_end_id]
            out.append(tokenizer.decode(ids))
    return out


def boxes_in(text: str) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in m.groups()) for m in _BOX.finditer(text)]


def evaluate_stage(graphdef, params, groups, tokenizer, *, n_bootstrap: int = 200) -> tuple[dict, list[dict]]:
    """groups: [(prompt arrays, rows, max_new_tokens)] (one compiled shape each) -> (metrics, per-example records).

    Answers are the last \\boxed{} (else the text after </think>, else the whole output).
    """
    texts, rows = [], []
    for arrays, group_rows, max_new_tokens in groups:
        texts += generate_texts(graphdef, params, arrays, tokenizer, max_new_tokens=max_new_tokens)
        rows += group_rows
    answers = [parse_answer(t) for t in texts]
    records = [{"example_id": r["example_id"], "task": r["task"], "question_type": r["question_type"], "output": t,
                "answer": a, "target": r["target"], "boxes_true": r["boxes"], "image_size": r["image_size"]}
               for r, t, a in zip(rows, texts, answers)]
    metrics: dict = {}
    vqa = [i for i, r in enumerate(rows) if r["task"] in ("vqa", "difference", "referring", "classification")]
    if vqa:
        s = vqa_scores([answers[i] for i in vqa], [rows[i]["target"] for i in vqa],
                       question_types=[rows[i]["question_type"] for i in vqa], n_bootstrap=n_bootstrap)
        metrics["vqa_score"] = s["overall"]
    grd = [i for i, r in enumerate(rows) if r["task"] == "grounding"]
    if grd:
        pred = [boxes_in(answers[i])[:1] or [(0.0, 0.0, 0.0, 0.0)] for i in grd]
        s = grounding_scores(pred, [rows[i]["boxes"] for i in grd], n_bootstrap=n_bootstrap)
        metrics["grounding"] = s["overall"]
    rep = [i for i, r in enumerate(rows) if r["task"] in ("findings", "impression")]
    if rep:
        preds = [answers[i].lower() or "empty" for i in rep]
        refs = [rows[i]["target"].lower() for i in rep]
        metrics["report_nlg"] = nlg_scores(preds, refs, meteor=False)
        f1 = rule_chexpert_f1(preds, refs)
        metrics["report_label_f1"] = {k: v for k, v in f1.items() if isinstance(v, (int, float))}
    # grounded reasoning: share of outputs in the think-then-boxed format that cite at least one box
    fmt = [bool(re.search(r"<think>.*\[\d+, \d+, \d+, \d+\].*</think>.*\\boxed\{", t, re.S)) for t in texts]
    metrics["grounded_format_rate"] = float(np.mean(fmt))
    return metrics, records
