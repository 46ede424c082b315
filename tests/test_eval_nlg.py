"""BLEU / ROUGE-L / CIDEr-D parity with pycocoevalcap on synthetic and real (IU-Xray) report pairs."""

from __future__ import annotations

import random
import re
import tarfile
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from helpers import real_formats as rf

from dmx_jax.eval import meteor as meteor_module
from dmx_jax.eval import nlg_sample_scores, nlg_scores
from dmx_jax.eval.rouge import lcs_length

coco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
coco_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")
coco_cider = pytest.importorskip("pycocoevalcap.cider.cider")

SENTENCES = [
    "the heart size is normal .",
    "the cardiomediastinal silhouette is within normal limits .",
    "no pleural effusion or pneumothorax .",
    "there is a small left pleural effusion .",
    "mild cardiomegaly is again noted .",
    "lungs are clear without focal consolidation .",
    "patchy opacity in the right lower lobe may represent atelectasis or pneumonia .",
    "no acute cardiopulmonary process .",
    "endotracheal tube terminates 4 cm above the carina .",
    "stable moderate bilateral pleural effusions with bibasilar atelectasis .",
    "pulmonary vascular congestion and mild interstitial edema .",
    "no acute osseous abnormality .",
    "right picc line tip in the lower svc .",
    "degenerative changes of the thoracic spine .",
    "a 1 cm nodule projects over the left upper lobe .",
    "no evidence of pneumothorax .",
    "the the the heart heart .",
    "effusion effusion effusion .",
]


def synthetic_report(rng: random.Random) -> str:
    text = " ".join(rng.sample(SENTENCES, rng.randint(1, 5)))
    words = text.split()
    if rng.random() < 0.3:  # word-level edits so predictions are near, not equal, to references
        i = rng.randrange(len(words))
        words[i : i + 1] = rng.choice([[], ["mild"], ["left", "basilar"], [words[i], words[i]]])
    return " ".join(words)


def coco_scores(predictions, references):
    gts = {i: [r] if isinstance(r, str) else list(r) for i, r in enumerate(references)}
    res = {i: [p] for i, p in enumerate(predictions)}
    bleu, bleu_samples = coco_bleu.Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_samples = coco_rouge.Rouge().compute_score(gts, res)
    cider, cider_samples = coco_cider.Cider().compute_score(gts, res)
    corpus = {f"bleu_{k + 1}": bleu[k] for k in range(4)} | {"rouge_l": rouge, "cider": cider}
    samples = {f"bleu_{k + 1}": np.asarray(bleu_samples[k]) for k in range(4)}
    samples |= {"rouge_l": np.asarray(rouge_samples), "cider": np.asarray(cider_samples)}
    return corpus, samples


def assert_parity(predictions, references):
    want, want_samples = coco_scores(predictions, references)
    got = nlg_scores(predictions, references, meteor=False)
    got_samples = nlg_sample_scores(predictions, references, meteor=False)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
        np.testing.assert_allclose(got_samples[key], want_samples[key], atol=1e-6, rtol=0, err_msg=key)
    return got


def test_lcs_matches_dynamic_programming_on_fuzzed_tokens():
    rng = random.Random(1)
    for _ in range(300):
        a = rng.choices("abcde", k=rng.randint(0, 70))
        b = rng.choices("abcde", k=rng.randint(0, 70))
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
        assert lcs_length(a, b) == table[-1][-1] == lcs_length(b, a)


def test_parity_synthetic_single_and_multi_reference():
    rng = random.Random(0)
    preds = [synthetic_report(rng) for _ in range(120)]
    single = [synthetic_report(rng) for _ in range(120)]
    multi = [[synthetic_report(rng) for _ in range(rng.randint(1, 4))] for _ in range(120)]
    got = assert_parity(preds, single)
    assert 0 < got["bleu_4"] < got["bleu_1"] < 1 and got["cider"] > 0
    assert_parity(preds, multi)
    assert nlg_scores(preds, single, meteor=False) == nlg_scores(preds, [[r] for r in single], meteor=False)


def test_parity_edge_cases():
    preds = [
        "",
        "effusion",
        "no pleural effusion .",
        "no  pleural effusion .",
        "the heart heart heart is normal .",
        "mild cardiomegaly",
        "no pleural effusion .",
    ]
    refs = [
        ["no effusion ."],
        ["small effusion", "effusion"],
        ["no pleural effusion ."],
        ["no pleural effusion ."],
        ["the heart is normal ."],
        ["mild cardiomegaly .", "stable mild cardiomegaly"],
        ["no effusion", "no pleural effusion or pneumothorax"],
    ]  # last: two refs equally close in length
    assert_parity(preds, refs)
    assert nlg_sample_scores(preds[2:3] * 2, refs[2:3] * 2, meteor=False)["bleu_4"][0] == pytest.approx(1.0)


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        nlg_scores(["a", "b"], ["a"], meteor=False)
    with pytest.raises(ValueError, match=r"references\[0\] is an empty list"):
        nlg_scores(["a"], [[]], meteor=False)
    with pytest.raises(TypeError, match=r"predictions\[1\]"):
        nlg_scores(["a", None], ["a", "b"], meteor=False)
    with pytest.raises(ValueError, match="no predictions"):
        nlg_scores([], [], meteor=False)


def test_meteor_omitted_with_reason_when_unavailable(monkeypatch):
    monkeypatch.setattr(meteor_module.shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="METEOR omitted: no `java`"):
        out = nlg_scores(["no effusion ."], ["no pleural effusion ."])
    assert "meteor" not in out and "bleu_1" in out
    with pytest.raises(RuntimeError, match="METEOR requested but unavailable"):
        nlg_scores(["a"], ["a"], meteor=True)


def test_meteor_matches_the_jar_when_available():
    ok, why = meteor_module.meteor_availability()
    if not ok:
        pytest.skip(f"METEOR unavailable: {why}")
    from pycocoevalcap.meteor.meteor import Meteor  # noqa: PLC0415 optional

    rng = random.Random(3)
    preds = [synthetic_report(rng) for _ in range(6)]
    refs = [[synthetic_report(rng)] for _ in range(6)]
    want, want_samples = Meteor().compute_score(dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)})
    got = nlg_scores(preds, refs)
    assert got["meteor"] == pytest.approx(want, abs=1e-6)
    assert 0 < got["meteor"] < 1


# ------------------------------------------------------------------------------ real IU-Xray report pairs


def _normalise(text: str) -> str:
    """Lower-case with punctuation split into its own tokens (the usual report-generation preprocessing)."""
    return " ".join(re.sub(r"([.,;:!?()\"'/])", r" \1 ", text.lower()).split())


@pytest.fixture(scope="module")
def iu_findings() -> list[str]:
    wheel, reason = rf.fetch_wheel("torchxrayvision")
    if wheel is None:
        pytest.skip(f"IU-Xray reports unavailable: {reason}")
    archive = rf.wheel_member(wheel, rf.TXV_DATA + "NLMCXR_reports.tgz")
    findings = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            for node in root.iter("AbstractText"):
                text = "".join(node.itertext()).strip()
                if node.get("Label") == "FINDINGS" and text:
                    findings.append(_normalise(text))
            if len(findings) >= 1200:
                break
    assert len(findings) >= 1000, "fewer FINDINGS sections than expected in NLMCXR_reports.tgz"
    return findings


def test_parity_real_iu_xray_findings(iu_findings):
    preds = iu_findings[:1000]
    refs = iu_findings[1:1001]  # each report's FINDINGS scored against the next report's
    got = assert_parity(preds, refs)
    assert 0.1 < got["bleu_1"] < 0.9 and got["cider"] > 0
    multi = [[iu_findings[(i + k) % len(iu_findings)] for k in (2, 5, 9)] for i in range(300)]
    assert_parity(iu_findings[:300], multi)
