"""Rule-based CheXpert labeler: hand-written negation / uncertainty / aggregation cases, gold rows, F1."""

from __future__ import annotations

import math
import random
import tarfile
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from helpers import real_formats as rf

from data_pipelines.schema import CHEXPERT5_LABELS as SCHEMA5
from data_pipelines.schema import CHEXPERT_LABELS as SCHEMA14
from dmx_jax.eval import chexpert_f1, chexpert_labels, rule_chexpert_f1
from dmx_jax.eval.chexpert_labeler import CHEXPERT_LABELS
from dmx_jax.eval.label_f1 import CHEXPERT5_LABELS

L = {name: i for i, name in enumerate(SCHEMA14)}
U = -1.0


def labels_of(text: str) -> dict[str, float]:
    """Mentioned classes only (NaN dropped), No Finding included."""
    row = chexpert_labels([text])[0]
    return {name: float(row[i]) for name, i in L.items() if not math.isnan(row[i])}


def findings(text: str) -> dict[str, float]:
    out = labels_of(text)
    out.pop("No Finding", None)
    return out


CASES = [  # (text, expected labels of the mentioned classes; No Finding checked separately)
    ("No pleural effusion.", {"Pleural Effusion": 0}),
    ("There is no evidence of pneumothorax.", {"Pneumothorax": 0}),
    ("Patchy left basilar opacity may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": U}),
    ("Cannot exclude pneumonia.", {"Pneumonia": U}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": U}),
    ("The right pleural effusion has resolved.", {"Pleural Effusion": 0}),
    ("Lungs are clear without consolidation.", {"Consolidation": 0}),
    ("Small left pleural effusion. No pneumothorax.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
    ("No pneumothorax, but there is a small right pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    (
        "No focal consolidation, pleural effusion, or pneumothorax.",
        {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0},
    ),
    (
        "No evidence of focal airspace consolidation, pleural effusion or pneumothorax.",
        {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0},
    ),
    ("Pneumothorax is not seen.", {"Pneumothorax": 0}),
    ("Heart size is normal.", {"Cardiomegaly": 0}),
    ("Normal heart size.", {"Cardiomegaly": 0}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0}),
    ("The heart is enlarged.", {"Cardiomegaly": 1}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": U}),
    ("Moderate cardiomegaly.", {"Cardiomegaly": 1}),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1}),
    ("The cardiomediastinal silhouette is within normal limits.", {"Enlarged Cardiomediastinum": 0}),
    ("Atelectasis versus pneumonia at the left base.", {"Atelectasis": U, "Pneumonia": U}),
    ("Findings are suspicious for pulmonary edema.", {"Edema": U}),
    ("Mild pulmonary vascular congestion.", {"Edema": 1}),
    ("No significant change in the moderate left pleural effusion.", {"Pleural Effusion": 1}),
    ("Right internal jugular central venous catheter terminates in the SVC.", {"Support Devices": 1}),
    ("The endotracheal tube has been removed.", {"Support Devices": 0}),
    ("Displaced fracture of the left seventh rib.", {"Fracture": 1}),
    ("No acute displaced rib fracture.", {"Fracture": 0}),
    ("A 1 cm nodule in the right upper lobe.", {"Lung Lesion": 1}),
    ("Small pericardial effusion.", {}),
    ("Apical pleural thickening on the left.", {"Pleural Other": 1}),
    ("Possible small left pneumothorax.", {"Pneumothorax": U}),
    ("Consolidation in the right lower lobe concerning for pneumonia.", {"Consolidation": 1, "Pneumonia": U}),
    ("Mild cardiomegaly without pleural effusion.", {"Cardiomegaly": 1, "Pleural Effusion": 0}),
    ("No pleural effusion; mild bibasilar atelectasis.", {"Pleural Effusion": 0, "Atelectasis": 1}),
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": 1}),
    ("Findings consistent with CHF.", {"Edema": 1, "Cardiomegaly": U}),
    ("Normal heart size. Possible mild CHF.", {"Cardiomegaly": 0, "Edema": U}),  # Cardiomegaly explicitly stated
    ("No evidence of heart failure.", {"Edema": 0}),
    ("Interval resolution of the left lower lobe consolidation.", {"Consolidation": 0}),
    (
        "Bibasilar opacities, right greater than left, are likely atelectasis, though infection cannot be excluded.",
        {"Lung Opacity": 1, "Atelectasis": U, "Pneumonia": U},
    ),
    ("No pneumothorax and the heart is enlarged.", {"Pneumothorax": 0, "Cardiomegaly": 1}),
    ("Interval removal of the right chest tube without pneumothorax.", {"Support Devices": 0, "Pneumothorax": 0}),
    (
        "Cardiac and mediastinal contours are within normal limits.",
        {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0},
    ),
    ("Left basilar airspace opacity, likely atelectasis.", {"Lung Opacity": 1, "Atelectasis": U}),
    ("Lungs are clear.", {}),
    ("No acute cardiopulmonary process.", {}),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:40] for c in CASES])
def test_hand_written_case(text, expected):
    assert findings(text) == expected


def test_label_order_is_the_schema_order():
    assert CHEXPERT_LABELS == SCHEMA14 and CHEXPERT5_LABELS == SCHEMA5
    out = chexpert_labels(["No effusion.", "Cardiomegaly."])
    assert out.shape == (2, 14) and out.dtype == np.float32
    assert chexpert_labels([]).shape == (0, 14)


def test_aggregation_rules():
    # 0 & 1 -> 1, 0 & u -> u, u & 1 -> 1 (mentions in different sentences of one report)
    assert findings("No left effusion. Small right effusion.") == {"Pleural Effusion": 1}
    assert findings("No effusion. Possible small effusion on the right.") == {"Pleural Effusion": U}
    assert findings("Possible left pneumonia. Right lower lobe pneumonia.") == {"Pneumonia": 1}


def test_no_finding_rule():
    assert labels_of("No pneumothorax or effusion.")["No Finding"] == 1.0
    assert labels_of("Lungs are clear. Left PICC line in place.")["No Finding"] == 1.0  # devices do not count
    assert "No Finding" not in labels_of("Small effusion.")
    assert "No Finding" not in labels_of("Possible atelectasis.")  # uncertain counts as a finding
    assert labels_of("")["No Finding"] == 1.0


# chexpert-labeler's labeled_reports.csv (MIT): four reports with their published labels.
GOLD = [
    (
        "Heart size normal and lungs are clear. No edema or pneumonia. No effusion",
        {"No Finding": 1, "Cardiomegaly": 0, "Edema": 0, "Pneumonia": 0, "Pleural Effusion": 0},
    ),
    (
        "1. Left pleural effusion with adjacent atelectasis. Right effusion is also present.\n\n"
        "2. Cardiomegaly without overt edema.",
        {"Cardiomegaly": 1, "Edema": 0, "Atelectasis": 1, "Pleural Effusion": 1},
    ),
    (
        "Minimal patchy airspace disease within the lingula, may reflect atelectasis or consolidation.",
        {"Lung Opacity": 1, "Consolidation": U, "Atelectasis": U},
    ),
    ("1. Stable mild cardiomegaly. 2. Hyperexpanded but clear lungs.", {"Cardiomegaly": 1}),
]


@pytest.mark.parametrize("text,expected", GOLD)
def test_chexpert_labeler_gold_rows(text, expected):
    assert labels_of(text) == expected


def _reference_f1(pred, ref, classes):
    """Plain-Python micro / macro F1 (uncertain as positive, empty classes score 0)."""

    def pos(v):
        return v == 1.0 or v == -1.0

    per, tp_all, fp_all, fn_all = [], 0, 0, 0
    for c in classes:
        tp = sum(1 for p, r in zip(pred, ref) if pos(p[c]) and pos(r[c]))
        fp = sum(1 for p, r in zip(pred, ref) if pos(p[c]) and not pos(r[c]))
        fn = sum(1 for p, r in zip(pred, ref) if not pos(p[c]) and pos(r[c]))
        per.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    return 2 * tp_all / (2 * tp_all + fp_all + fn_all), sum(per) / len(per)


def test_f1_matches_plain_python_on_random_label_matrices():
    rng = random.Random(0)
    values = [1.0, 0.0, -1.0, float("nan")]
    for _ in range(20):
        n = rng.randint(1, 40)
        pred = [[rng.choice(values) for _ in range(14)] for _ in range(n)]
        ref = [[rng.choice(values) for _ in range(14)] for _ in range(n)]
        got = chexpert_f1(np.array(pred), np.array(ref))
        five = [L[c] for c in SCHEMA5]
        for name, classes in (("14", list(range(14))), ("5", five)):
            micro, macro = _reference_f1(pred, ref, classes)
            assert got[f"micro_f1_{name}"] == pytest.approx(micro, abs=1e-12)
            assert got[f"macro_f1_{name}"] == pytest.approx(macro, abs=1e-12)
    assert "uncertain (-1) counted as positive" in got["rule"]
    with pytest.raises(ValueError, match="CheXpert train.csv column order"):
        chexpert_f1(np.zeros((2, 13)), np.zeros((2, 13)))


def test_rule_chexpert_f1_on_reports():
    preds = ["Small left effusion.", "Possible pneumonia.", "Normal chest."]
    refs = ["Left pleural effusion.", "No pneumonia.", "Lungs are clear."]
    out = rule_chexpert_f1(preds, refs)
    assert "not CheXbert" in out["labeler"]
    # effusion TP; pneumonia FP (uncertain = positive); No Finding: pred [0,0,1] vs ref [0,1,1] -> TP 1, FN 1
    assert out["per_class_f1"]["Pleural Effusion"] == 1.0 and out["per_class_f1"]["Pneumonia"] == 0.0
    assert out["per_class_f1"]["No Finding"] == pytest.approx(2 / 3)
    assert out["micro_f1_14"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


# ------------------------------------------------------- real IU-Xray reports against their MeSH annotations


@pytest.fixture(scope="module")
def iu_reports():
    """(FINDINGS + IMPRESSION text, MeSH major terms) of every IU-Xray report (torchxrayvision wheel)."""
    wheel, reason = rf.fetch_wheel("torchxrayvision")
    if wheel is None:
        pytest.skip(f"IU-Xray reports unavailable: {reason}")
    rows = []
    with tarfile.open(rf.wheel_member(wheel, rf.TXV_DATA + "NLMCXR_reports.tgz"), "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                root = ET.fromstring(tar.extractfile(member).read())
                sections = {n.get("Label"): "".join(n.itertext()).strip() for n in root.iter("AbstractText")}
                text = " ".join(t for t in (sections.get("FINDINGS"), sections.get("IMPRESSION")) if t)
                if text:
                    rows.append((text, [n.text for n in root.iter("major") if n.text]))
    assert len(rows) > 3500
    return rows


def test_agrees_with_iu_xray_mesh_annotations(iu_reports):
    """The radiologists' MeSH terms are independent labels: a MeSH finding should be labelled present
    (1 or -1) and a MeSH 'normal' report should get No Finding."""
    labels = chexpert_labels([text for text, _ in iu_reports])
    for mesh, label, floor in [
        ("Cardiomegaly", "Cardiomegaly", 0.95),
        ("Pleural Effusion", "Pleural Effusion", 0.95),
        ("Pulmonary Atelectasis", "Atelectasis", 0.9),
        ("Opacity", "Lung Opacity", 0.9),
        ("Consolidation", "Consolidation", 0.95),
        ("Pneumonia", "Pneumonia", 0.95),
        ("Fractures, Bone", "Fracture", 0.9),
        ("Nodule", "Lung Lesion", 0.85),
    ]:
        rows = [i for i, (_, terms) in enumerate(iu_reports) if any(t.startswith(mesh) for t in terms)]
        values = labels[rows, L[label]]
        assert len(rows) >= 20 and np.mean((values == 1) | (values == -1)) >= floor, (mesh, len(rows))
    normal = [i for i, (_, terms) in enumerate(iu_reports) if terms == ["normal"]]
    assert len(normal) > 1000 and np.mean(labels[normal, L["No Finding"]] == 1.0) >= 0.95


def test_recovers_the_synthetic_generators_labels():
    """The synthetic report generator (data_pipelines.synthetic) labels each report from the mentions it
    writes; the labeler must recover those labels from the text alone."""
    dataset = pytest.importorskip("data_pipelines.synthetic.dataset")
    from data_pipelines.synthetic.config import SyntheticConfig  # noqa: PLC0415 optional

    config = SyntheticConfig()
    studies = []
    for i in range(400):
        try:
            studies.append(dataset.study("test", i, config))
        except RuntimeError:  # a generator-side placement failure is not the labeler's concern
            continue
    assert len(studies) >= 380
    want = np.stack([s.labels for s in studies])
    got = chexpert_labels([f"{s.findings_text} {s.impression_text}" for s in studies])
    scores = chexpert_f1(got, want)
    assert scores["micro_f1_14"] >= 0.95 and scores["macro_f1_14"] >= 0.95, scores
    assert scores["micro_f1_5"] >= 0.95 and scores["macro_f1_5"] >= 0.95, scores
    same = (np.isnan(got) & np.isnan(want)) | (got == want)
    assert same.mean() >= 0.99  # the 1 / 0 / -1 / NaN values themselves, not only the binarised F1
