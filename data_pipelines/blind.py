"""The question-only baseline: the best a model that never looks at the image can do from the training set's
question priors (the "blind" or language-prior baseline of the VQA literature).

For each test prompt, the answer is the most common training answer to the same prompt text (ties: the one
seen first), else the most common answer of the same task and question type. Grounding prompts get the
coordinate-wise median of the first training box of the same prompt text. Boxes are compared in whatever frame
the rows carry (train and test rows must share it: the model-input pixels of the row encoder).

Scored with the model's own metrics, it says how much of a stage's VQA score or mIoU the question alone earns,
next to the images-swapped control, which says how much of the stage's own answers the image changes. It reads
the row encoder's metadata and answers in the targets' box format (data_pipelines.boxes), hence lives here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from data_pipelines.boxes import format_box_text


def question_only_answers(train: Sequence[dict], test: Sequence[dict]) -> list[str]:
    """train, test: row metadata with "prompt", "task", "question_type", "target" (train: the answer text) and
    "boxes" (grounding: [(x0, y0, x1, y1), ...]) -> one answer string per test row."""
    by_prompt: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[tuple, Counter] = defaultdict(Counter)
    boxes: dict[str, list] = defaultdict(list)
    for r in train:
        if r["task"] == "grounding":
            if r["boxes"]:
                boxes[r["prompt"]].append(r["boxes"][0])
            continue
        by_prompt[r["prompt"]][r["target"]] += 1
        by_type[(r["task"], r["question_type"])][r["target"]] += 1
    out = []
    for r in test:
        if r["task"] == "grounding":
            seen = boxes.get(r["prompt"])
            out.append(format_box_text(np.median(np.asarray(seen, np.float64), axis=0)) if seen else "")
            continue
        counts = by_prompt.get(r["prompt"]) or by_type.get((r["task"], r["question_type"]))
        out.append(counts.most_common(1)[0][0] if counts else "")
    return out
