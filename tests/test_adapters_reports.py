"""Report and label adapters (MIMIC-CXR with its report sections, CheXpert, CheXpert Plus, IU-Xray) on files
written here in the exact real formats."""

from __future__ import annotations

import re
import tarfile

import numpy as np
import pytest
from helpers import real_formats as rf

from data_pipelines.adapters import (
    MissingColumnError,
    load_chexpert,
    load_chexpert_plus,
    load_iu_xray,
    load_mimic_cxr,
    parse_report_sections,
)
from data_pipelines.image_io import ImageReadError
from data_pipelines.schema import CHEXPERT_LABELS

# ------------------------------------------------------------------------------------------------ MIMIC

S1 = dict(
    subject=10000032,
    study=50414267,
    split="train",
    images=[
        ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL", (20, 24)),
        ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP", (22, 22)),
        ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA", (24, 20)),
    ],
    findings="There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities "
    "that most likely represent nipple shadows. The cardiomediastinal silhouette is normal. Clips "
    "project over the left lung, potentially within the breast.",
    impression="No acute cardiopulmonary process.",
    labels={"No Finding": 1.0, "Support Devices": 0.0, "Pleural Effusion": -1.0},
)
S2 = dict(
    subject=10000764,
    study=57375967,
    split="validate",
    images=[("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP", (16, 16))],
    findings=None,
    impression="Focal consolidation at the left lung base, possibly atelectasis or pneumonia.",
    labels={"Consolidation": 1.0, "Atelectasis": -1.0, "Pneumonia": -1.0, "Edema": 0.0},
)
S3 = dict(
    subject=19999987,
    study=55368167,
    split="test",
    images=[("58766883-376a15ce-3b323a28-6af950a0-16b793bd", "AP", (18, 12))],
    findings="Endotracheal tube tip is 4 cm above the carina. Lungs are clear.",
    impression=None,
    labels=None,
)


def _write_mimic(root, reports_root=None, **kw):
    studies = [dict(s, report=rf.mimic_report(s["findings"], s["impression"])) for s in (S1, S2, S3)]
    rf.write_mimic_cxr(root, studies, reports_root=reports_root, **kw)


def _expected_labels(values):
    return np.array([values.get(n, np.nan) for n in rf.CHEXPERT_TRAIN_ORDER], np.float32)


def test_mimic_cxr_reports_labels_views_and_splits(tmp_path):
    _write_mimic(tmp_path / "jpg", reports_root=tmp_path / "reports")
    out = list(
        load_mimic_cxr(
            tmp_path / "jpg", reports_root=tmp_path / "reports", tasks=("findings", "impression", "classification")
        )
    )
    by_id = {e.example_id: e for e in out}
    assert sorted(by_id) == sorted(
        [
            "mimic-cxr/s50414267/findings",
            "mimic-cxr/s50414267/impression",
            "mimic-cxr/s50414267/classification",
            "mimic-cxr/s57375967/impression",
            "mimic-cxr/s57375967/classification",
            "mimic-cxr/s55368167/findings",
        ]
    )
    f1 = by_id["mimic-cxr/s50414267/findings"]
    assert f1.target == S1["findings"] and by_id["mimic-cxr/s50414267/impression"].target == S1["impression"]
    assert by_id["mimic-cxr/s55368167/findings"].target == S3["findings"]
    # PA, then AP, then LATERAL although the metadata lists them the other way round; sizes from Rows/Columns
    assert [p.rsplit("/", 1)[1][:8] for p in f1.images] == ["02aa804e", "2a2277a9", "174413ec"]
    assert f1.image_sizes == ((24, 20), (22, 22), (20, 24))
    assert "/files/p10/p10000032/s50414267/" in f1.images[0]
    assert list(rf.CHEXPERT_TRAIN_ORDER) == list(CHEXPERT_LABELS)
    for study, sid in ((S1, "50414267"), (S2, "57375967")):
        np.testing.assert_array_equal(
            by_id[f"mimic-cxr/s{sid}/classification"].labels, _expected_labels(study["labels"])
        )
    assert by_id["mimic-cxr/s57375967/classification"].target == "Consolidation"
    assert {e.split for e in out if "57375967" in e.example_id} == {"val"}
    val = list(load_mimic_cxr(tmp_path / "jpg", reports_root=tmp_path / "reports", split="validate"))
    assert [e.example_id for e in val] == ["mimic-cxr/s57375967/impression"]
    pa_only = list(load_mimic_cxr(tmp_path / "jpg", reports_root=tmp_path / "reports", views=("PA",)))
    assert {len(e.images) for e in pa_only} == {1} and {e.meta["study_id"] for e in pa_only} == {"50414267"}


def test_mimic_cxr_errors_and_missing_policies(tmp_path):
    _write_mimic(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="s50414267.txt"):
        list(load_mimic_cxr(tmp_path / "a", reports_root=tmp_path / "elsewhere"))
    assert list(load_mimic_cxr(tmp_path / "a", reports_root=tmp_path / "elsewhere", skip_missing_reports=True)) == []
    _write_mimic(tmp_path / "b", write_images=False)
    with pytest.raises(ImageReadError, match="file not found"):
        list(load_mimic_cxr(tmp_path / "b"))
    assert list(load_mimic_cxr(tmp_path / "b", missing_images="skip")) == []
    allowed = list(load_mimic_cxr(tmp_path / "b", missing_images="allow"))
    assert allowed[0].image_sizes == ((24, 20), (22, 22), (20, 24))  # sizes still known from the metadata
    bad = tmp_path / "c"
    rf.write_csv(bad / "mimic-cxr-2.0.0-metadata.csv.gz", ("dicom_id", "subject_id", "study_id", "Rows", "Columns"), [])
    rf.write_csv(bad / "mimic-cxr-2.0.0-split.csv.gz", ("dicom_id", "study_id", "subject_id", "split"), [])
    with pytest.raises(MissingColumnError, match=r"mimic-cxr-2\.0\.0-metadata\.csv\.gz.*ViewPosition"):
        list(load_mimic_cxr(bad))
    with pytest.raises(ValueError, match="unknown task"):
        load_mimic_cxr(tmp_path / "a", tasks=("summarise",))
    with pytest.raises(ValueError, match="not available"):
        load_mimic_cxr(tmp_path / "a", tasks=("grounding",))


def _official_style_sections(text):
    """Reference for the MIT-LCP/mimic-cxr section convention: headers match `\\n ([A-Z ()/,-]+):\\s`, a section
    runs to the next header, and the next header is searched only after the first newline of the section."""
    header = re.compile(r"\n ([A-Z ()/,-]+):\s")
    found = {}
    m = header.search(text)
    while m:
        name, start = m.group(1).lower(), m.end()
        newline = text.find("\n", start)
        m = header.search(text, start + (newline - start if newline != -1 else 0))
        found.setdefault(name, text[start : m.start() if m else len(text)])
    return found


def test_report_section_aliases_and_fallbacks():
    text = (
        "                                 FINAL REPORT\n ADDENDUM: ___ called at 10am.\n"
        " ______________________________________________________________________________\n"
        " FINDING:  Mild cardiomegaly.\n \n IMPRESSIONS: \n \n 1. Mild cardiomegaly.\n 2. No edema.\n \n"
        " CONCLUSION:  Stable.\n \n Dr. ___ was notified\n by phone.\n"
    )
    sections = parse_report_sections(text)
    assert sections.findings == "Mild cardiomegaly."
    assert sections.impression == "1. Mild cardiomegaly. 2. No edema. Stable. Dr. ___ was notified by phone."
    assert sections.last_paragraph == "Dr. ___ was notified by phone."
    assert [name for name, _ in sections.sections] == ["preamble", "addendum", "findings", "impression", "impression"]
    bare = parse_report_sections("Heart size is normal.\n\nNo acute process.")
    assert (bare.findings, bare.impression, bare.last_paragraph) == ("", "", "No acute process.")


def test_report_sections_match_official_convention_on_fuzzed_reports():
    rng = np.random.default_rng(7)
    words = [
        "the",
        "heart",
        "size",
        "is",
        "normal",
        "lungs",
        "clear",
        "no",
        "effusion",
        "pneumothorax",
        "left",
        "right",
        "base",
        "opacity",
        "___",
        "2",
        "cm",
    ]
    headers = [
        "EXAMINATION",
        "INDICATION",
        "TECHNIQUE",
        "COMPARISON",
        "FINDINGS",
        "IMPRESSION",
        "NOTIFICATION",
        "RECOMMENDATION(S)",
        "CHEST (PA AND LAT)",
    ]
    for _ in range(200):
        chosen = [h for h in headers if rng.random() < 0.7]
        rng.shuffle(chosen)
        text = "                                 FINAL REPORT\n"
        for h in chosen:
            body = " ".join(rng.choice(words, int(rng.integers(1, 40)))).capitalize() + "."
            lines = [body[i : i + 70] for i in range(0, len(body), 70)]
            same_line = rng.random() < 0.5
            text += (
                f" {h}:  "
                + (
                    lines[0] + "\n" + "".join(f" {ln}\n" for ln in lines[1:])
                    if same_line
                    else "\n \n" + "".join(f" {ln}\n" for ln in lines)
                )
                + " \n"
            )
        ref = _official_style_sections(text)
        ours = parse_report_sections(text)
        assert ours.findings == " ".join(ref.get("findings", "").split())
        assert ours.impression == " ".join(ref.get("impression", "").split())
        assert ours.comparison == " ".join(ref.get("comparison", "").split())


# --------------------------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *rf.CHEXPERT_TRAIN_ORDER)


def test_chexpert_reads_labels_by_name_in_any_column_order(tmp_path):
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for i, split in enumerate(["train", "train", "valid"]):
        rel = f"CheXpert-v1.0-small/{split}/patient0000{i}/study1/view1_frontal.jpg"
        values = {n: float(rng.choice([1.0, 0.0, -1.0, np.nan])) for n in rf.CHEXPERT_TRAIN_ORDER}
        truth[rel] = values
        rows.append((split, rel, values))
        rf.write_jpeg(tmp_path / rel, rf.tiny_gray(10, 14, seed=i))
    shuffled = list(rf.CHEXPERT_TRAIN_ORDER)
    rng.shuffle(shuffled)  # valid.csv gets a permuted label order: mapping must be by name
    for split, order in (("train", rf.CHEXPERT_TRAIN_ORDER), ("valid", shuffled)):
        rf.write_csv(
            tmp_path / "CheXpert-v1.0-small" / f"{split}.csv",
            ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *order),
            [
                (rel, "Female", 68, "Frontal", "AP", *(rf.label_cell(v[n]) for n in order))
                for s, rel, v in rows
                if s == split
            ],
        )
    for root in (tmp_path, tmp_path / "CheXpert-v1.0-small"):
        out = list(load_chexpert(root))
        assert [e.split for e in out] == ["train", "train", "val"]
        for e in out:
            np.testing.assert_array_equal(e.labels, _expected_labels(truth[e.example_id[len("chexpert/") :]]))
            assert e.image_sizes == ((10, 14),) and e.meta["view"] == "Frontal"
    assert len(list(load_chexpert(tmp_path, split="valid"))) == 1
    rf.write_csv(tmp_path / "broken" / "train.csv", CHEXPERT_HEADER[:-1], [])
    with pytest.raises(MissingColumnError, match=r"train\.csv.*Support Devices"):
        list(load_chexpert(tmp_path / "broken"))


def test_chexpert_plus_groups_rows_of_a_report(tmp_path):
    def row(path, view, patient, order, findings, impression, split="train"):
        values = dict.fromkeys(rf.CHEXPERT_PLUS_HEADER, "")
        values.update(
            path_to_image=path,
            path_to_dcm=path.replace(".jpg", ".dcm"),
            frontal_lateral=view,
            deid_patient_id=patient,
            patient_report_date_order=order,
            section_findings=findings,
            section_impression=impression,
            split=split,
            report=f"FINDINGS: {findings}",
        )
        return [values[k] for k in rf.CHEXPERT_PLUS_HEADER]

    rows = [
        row("train/patient42/study1/view2_lateral.jpg", "Lateral", "patient42", 1, "Lungs are clear.", "Normal."),
        row("train/patient42/study1/view1_frontal.jpg", "Frontal", "patient42", 1, "Lungs are clear.", "Normal."),
        row("valid/patient7/study1/view1_frontal.jpg", "Frontal", "patient7", 1, "", "Small effusion.", "valid"),
    ]
    rf.write_csv(tmp_path / "df_chexpert_plus_240401.csv", rf.CHEXPERT_PLUS_HEADER, rows)
    for r in rows:  # the PNG release stores .png files under PNG/
        rf.write_png(tmp_path / "PNG" / r[0].replace(".jpg", ".png"), rf.tiny_gray(8, 9))
    out = list(load_chexpert_plus(tmp_path))
    assert [(e.example_id, e.target, e.split) for e in out] == [
        ("chexpert-plus/patient42/1/findings", "Lungs are clear.", "train"),
        ("chexpert-plus/patient42/1/impression", "Normal.", "train"),
        ("chexpert-plus/patient7/1/impression", "Small effusion.", "val"),
    ]
    assert out[0].images[0].endswith("PNG/train/patient42/study1/view1_frontal.png") and len(out[0].images) == 2


# ----------------------------------------------------------------------------------------------- IU-Xray


def test_iu_xray_from_folder_and_archive(tmp_path):
    folder = tmp_path / "ecgen-radiology"
    rf.write_iu_report(
        folder,
        1,
        {
            "COMPARISON": "None.",
            "INDICATION": "Positive TB test",
            "FINDINGS": "The cardiac silhouette and mediastinum size are within normal limits.",
            "IMPRESSION": "Normal chest x-XXXX.",
        },
        ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
    )
    rf.write_iu_report(folder, 2, {"FINDINGS": "", "IMPRESSION": "No acute disease."}, ["CXR2_IM-0652-1001"])
    rf.write_iu_report(folder, 10, {"FINDINGS": "Heart size normal.", "IMPRESSION": "Negative."}, [])
    for image_id in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001"):
        rf.write_png(tmp_path / "NLMCXR_png" / f"{image_id}.png", rf.tiny_gray(9, 7))
    out = list(load_iu_xray(tmp_path))
    assert [(e.example_id, e.target) for e in out] == [
        ("iu-xray/CXR1/findings", "The cardiac silhouette and mediastinum size are within normal limits."),
        ("iu-xray/CXR1/impression", "Normal chest x-XXXX."),
        ("iu-xray/CXR2/impression", "No acute disease."),
    ]
    assert len(out[0].images) == 2 and out[0].meta["indication"] == "Positive TB test"
    with tarfile.open(tmp_path / "NLMCXR_reports.tgz", "w:gz") as tar:
        tar.add(folder, arcname="ecgen-radiology")
    archive = tmp_path / "NLMCXR_reports.tgz"
    assert [e.target for e in load_iu_xray(archive, images_dir=tmp_path / "NLMCXR_png")] == [e.target for e in out]
    with pytest.raises(ValueError, match="no official"):
        load_iu_xray(tmp_path, split="train")
