"""Validation shared by the text metrics: predictions as strings, references as non-empty lists of strings."""

from __future__ import annotations

from collections.abc import Sequence


def reference_lists(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], where: str
) -> tuple[list[str], list[list[str]]]:
    """(predictions, references as one list of strings per prediction); ValueError naming the bad field."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(f"{where}: predictions and references must be sequences of strings, not one string")
    predictions = list(predictions)
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{where}: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError(f"{where}: no predictions to score")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise TypeError(f"{where}: predictions[{i}] is {type(p).__name__}, expected str")
    refs: list[list[str]] = []
    for i, r in enumerate(references):
        group = [r] if isinstance(r, str) else list(r)
        if not group:
            raise ValueError(f"{where}: references[{i}] is an empty list")
        for j, s in enumerate(group):
            if not isinstance(s, str):
                raise TypeError(f"{where}: references[{i}][{j}] is {type(s).__name__}, expected str")
        refs.append(group)
    return predictions, refs
