"""Model-based report metrics as optional plug-ins: CheXbert F1, RadGraph F1, BERTScore, GREEN, RaTEScore.

Each plug-in loads weights from a local path (constructor argument, else its environment variable) and
imports its library lazily. Nothing is ever downloaded: hub-based libraries are only run when
HF_HUB_OFFLINE=1 is set (set it before starting Python). When a requirement is missing the plug-in is
skipped with a reason. The library calls follow each package's documented API; they cannot be exercised
in this repository's tests (no weights), which check only availability and the interface.
"""
from __future__ import annotations

import abc
import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path


class PluginUnavailable(RuntimeError):
    """Raised by MetricPlugin.score when the plug-in cannot run; the message says why."""


class MetricPlugin(abc.ABC):
    """name; available() -> (ok, reason); score(predictions, references) -> {metric: float}."""

    name: str = ""
    env_var: str = ""
    modules: tuple[str, ...] = ()
    needs_hub_offline: bool = True  # library resolves weights through the Hugging Face hub cache
    needs_gpu: bool = False

    def __init__(self, weights: str | os.PathLike | None = None):
        self._weights = weights

    def weights_path(self) -> Path | None:
        value = self._weights if self._weights is not None else os.environ.get(self.env_var)
        return Path(value) if value else None

    def available(self) -> tuple[bool, str]:
        path = self.weights_path()
        if path is None:
            return False, f"{self.name}: no weights path (pass weights= or set {self.env_var})"
        if not path.exists():
            return False, f"{self.name}: weights path {path} does not exist"
        for module in self.modules:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                return False, f"{self.name}: python package {module!r} is not installed"
        if self.needs_hub_offline and os.environ.get("HF_HUB_OFFLINE") != "1":
            return False, f"{self.name}: set HF_HUB_OFFLINE=1 so the library cannot download anything"
        if self.needs_gpu:
            import torch  # lazy: only reached when the plug-in's own packages are installed
            if not torch.cuda.is_available():
                return False, f"{self.name}: needs a CUDA GPU"
        return True, ""

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        if len(predictions) != len(references) or not predictions:
            raise ValueError(f"{self.name}: need equally many (>0) predictions and references, "
                             f"got {len(predictions)} and {len(references)}")
        ok, why = self.available()
        if not ok:
            raise PluginUnavailable(why)
        return self._score(list(predictions), list(references), self.weights_path())

    @abc.abstractmethod
    def _score(self, predictions: list[str], references: list[str], weights: Path) -> dict[str, float]:
        """The library call; runs only when available()."""


class CheXbertF1(MetricPlugin):
    """f1chexbert; weights: the process's Hugging Face hub cache (HF_HUB_CACHE, set before starting Python)
    holding StanfordAIMI/RRG_scorers chexbert.pth and bert-base-uncased."""

    name, env_var, modules = "chexbert", "DMX_CHEXBERT_CACHE", ("f1chexbert", "torch", "transformers")

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        hub_cache = os.environ.get("HF_HUB_CACHE")
        if ok and (hub_cache is None or Path(hub_cache).resolve() != self.weights_path().resolve()):
            return False, f"{self.name}: f1chexbert reads the hub cache; set HF_HUB_CACHE={self.weights_path()}"
        return ok, why

    def _score(self, predictions, references, weights):
        from f1chexbert import F1CheXbert
        _, _, report_14, report_5 = F1CheXbert()(hyps=predictions, refs=references)
        return {"chexbert_micro_f1_14": report_14["micro avg"]["f1-score"],
                "chexbert_macro_f1_14": report_14["macro avg"]["f1-score"],
                "chexbert_micro_f1_5": report_5["micro avg"]["f1-score"],
                "chexbert_macro_f1_5": report_5["macro avg"]["f1-score"]}


class RadGraphF1(MetricPlugin):
    """radgraph F1RadGraph(reward_level="all"); weights: its model_cache_dir with the radgraph archive."""

    name, env_var, modules = "radgraph", "DMX_RADGRAPH_DIR", ("radgraph", "torch")

    def __init__(self, weights=None, model_type: str = "radgraph"):
        super().__init__(weights)
        self.model_type = model_type

    def _score(self, predictions, references, weights):
        from radgraph import F1RadGraph
        scorer = F1RadGraph(reward_level="all", model_type=self.model_type, model_cache_dir=str(weights))
        (simple, partial, complete), _, _, _ = scorer(hyps=predictions, refs=references)
        return {"radgraph_simple": float(simple), "radgraph_partial": float(partial),
                "radgraph_complete": float(complete)}


class BERTScore(MetricPlugin):
    """bert_score.BERTScorer on a local model directory (num_layers must be given for a path)."""

    name, env_var, modules = "bertscore", "DMX_BERTSCORE_MODEL", ("bert_score", "torch", "transformers")

    def __init__(self, weights=None, num_layers: int = 9):
        super().__init__(weights)
        self.num_layers = num_layers

    def _score(self, predictions, references, weights):
        from bert_score import BERTScorer
        p, r, f = BERTScorer(model_type=str(weights), num_layers=self.num_layers, lang="en").score(
            predictions, references)
        return {"bertscore_p": float(p.mean()), "bertscore_r": float(r.mean()), "bertscore_f1": float(f.mean())}


class GREEN(MetricPlugin):
    """green_score.GREEN with a local GREEN checkpoint directory (7B LLM: GPU only)."""

    name, env_var, modules, needs_gpu = "green", "DMX_GREEN_MODEL", ("green_score", "torch", "transformers"), True

    def _score(self, predictions, references, weights):
        from green_score import GREEN as GreenScorer
        with tempfile.TemporaryDirectory() as out_dir:
            mean, _, _, _, _ = GreenScorer(str(weights), output_dir=out_dir)(references, predictions)
        return {"green": float(mean)}


class RaTEScore(MetricPlugin):
    """RaTEScore with local NER and embedding models: <dir>/RaTE-NER-Deberta and <dir>/BioLORD-2023-C."""

    name, env_var, modules = "ratescore", "DMX_RATESCORE_DIR", ("RaTEScore", "torch", "transformers")

    def _score(self, predictions, references, weights):
        from RaTEScore import RaTEScore as Scorer
        scorer = Scorer(bert_model=str(weights / "RaTE-NER-Deberta"), eval_model=str(weights / "BioLORD-2023-C"))
        scores = scorer.compute_score(predictions, references)
        return {"ratescore": float(sum(scores) / len(scores))}


PLUGINS: dict[str, type[MetricPlugin]] = {p.name: p for p in (CheXbertF1, RadGraphF1, BERTScore, GREEN, RaTEScore)}


def plugin_scores(predictions: Sequence[str], references: Sequence[str], plugins: Sequence[MetricPlugin] | None = None,
                  ) -> tuple[dict[str, float], dict[str, str]]:
    """(scores of the available plug-ins, {name: reason} of the skipped ones; each skip also warns)."""
    plugins = list(plugins) if plugins is not None else [cls() for cls in PLUGINS.values()]
    scores: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for plugin in plugins:
        ok, why = plugin.available()
        if not ok:
            skipped[plugin.name] = why
            warnings.warn(f"metric plug-in skipped: {why}", RuntimeWarning, stacklevel=2)
            continue
        scores.update(plugin.score(predictions, references))
    return scores, skipped
