"""Procedural synthetic chest X-ray benchmark: the embedded default dataset of dmx-jax (data.md §4).

Physics-lite radiographs (line integrals of analytic anatomy and lesions, MONOCHROME2) with exact lesion masks
and tight boxes, CheXpert-named findings, MIMIC-style reports with a consistent CheXpert-14 vector,
CLEVR-style VQA with programs and balanced answers, grounding/referring items, difference questions on
prior/current pairs, and box-citing reasoning traces in the DeepMedix-R1 format.

Module map: config (SyntheticConfig, splits, random streams) -> geometry, anatomy -> render (anatomy, display)
-> findings (vocabulary, planning, placement) -> lesions (lesion rendering) -> scene (plan / realize / render)
-> reports, vqa, reasoning, grounding -> dataset (SyntheticStudy, sample, examples, SyntheticSource);
preview writes contact sheets.
"""

from data_pipelines.synthetic.config import SPLIT_OFFSETS, SPLITS, SyntheticConfig, global_index, split_of
from data_pipelines.synthetic.dataset import SyntheticSource, SyntheticStudy, all_task_examples, examples, sample, study
from data_pipelines.synthetic.findings import FINDING_NAMES, Finding
from data_pipelines.synthetic.reasoning import parse_trace, render_trace
from data_pipelines.synthetic.vqa import execute
