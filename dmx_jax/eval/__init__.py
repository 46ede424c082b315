"""Evaluation: report-generation text metrics, rule-based CheXpert labels and F1, VQA and grounding scores,
bootstrap CIs, and the Report Arena (dmx_jax.eval.arena).

Runtime needs only numpy and the standard library; pycocoevalcap (METEOR's jar) is imported lazily when present.
"""

from dmx_jax.eval.bootstrap import bootstrap_ci, grouped_summaries, summarise
from dmx_jax.eval.chexpert_labeler import CHEXPERT_LABELS, Mention, chexpert_labels, extract_mentions
from dmx_jax.eval.grounding import box_iou, greedy_match, grounding_sample_scores, grounding_scores
from dmx_jax.eval.label_f1 import CHEXPERT5_LABELS, chexpert_f1, rule_chexpert_f1
from dmx_jax.eval.meteor import meteor_availability
from dmx_jax.eval.nlg import nlg_sample_scores, nlg_scores
from dmx_jax.eval.vqa import vqa_sample_score, vqa_scores

__all__ = [
    "CHEXPERT5_LABELS",
    "CHEXPERT_LABELS",
    "Mention",
    "bootstrap_ci",
    "box_iou",
    "chexpert_f1",
    "chexpert_labels",
    "extract_mentions",
    "greedy_match",
    "grounding_sample_scores",
    "grounding_scores",
    "grouped_summaries",
    "meteor_availability",
    "nlg_sample_scores",
    "nlg_scores",
    "rule_chexpert_f1",
    "summarise",
    "vqa_sample_score",
    "vqa_scores",
]
