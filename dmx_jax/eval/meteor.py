"""METEOR 1.5 through the jar bundled with pycocoevalcap (optional: needs `java` and that package).

pycocoevalcap is not a dependency of dmx_jax; it is imported lazily here and only when present. The jar's
line protocol forbids newlines and `|||` inside a sentence, so both are replaced by spaces first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence

import numpy as np

from dmx_jax.eval._inputs import reference_lists


def meteor_availability() -> tuple[bool, str]:
    """(True, '') when METEOR can run, else (False, why not)."""
    if shutil.which("java") is None:
        return False, "no `java` executable on PATH"
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return False, "pycocoevalcap is not installed"
    folder = os.path.join(list(spec.submodule_search_locations)[0], "meteor")
    for name in ("meteor-1.5.jar", os.path.join("data", "paraphrase-en.gz")):
        if not os.path.isfile(os.path.join(folder, name)):
            return False, f"pycocoevalcap has no {name} in {folder}"
    return True, ""


def _clean(text: str) -> str:
    return " ".join(text.replace("|||", " ").split())


def meteor(predictions: Sequence[str], references) -> tuple[float, np.ndarray]:
    """(corpus METEOR as the jar aggregates it, per-sample METEOR [N]); RuntimeError when unavailable."""
    predictions, references = reference_lists(predictions, references, "meteor")
    ok, why = meteor_availability()
    if not ok:
        raise RuntimeError(f"METEOR unavailable: {why}")
    from pycocoevalcap.meteor.meteor import Meteor  # noqa: PLC0415 optional

    gts = {i: [_clean(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [_clean(p)] for i, p in enumerate(predictions)}
    scorer = Meteor()
    try:
        corpus, per_sample = scorer.compute_score(gts, res)
    finally:
        del scorer  # its __del__ stops the java process
    return float(corpus), np.asarray(per_sample, dtype=np.float64)
