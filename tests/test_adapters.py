"""Dataset adapters on files written here in the exact real formats, and on the real metadata CSVs and IU-Xray
reports shipped in the torchxrayvision 1.5.7 wheel (downloaded with `pip download --no-deps`, never installed,
read at test time from ~/.cache/dmx_jax/test_assets, never committed)."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pytest
from helpers import real_formats as rf

from data_pipelines.adapters import (
    ADAPTERS,
    GenericColumns,
    MissingColumnError,
    load_chestxray14,
    load_chexpert,
    load_chexpert_plus,
    load_dataset,
    load_generic,
    load_iu_xray,
    load_medical_diff_vqa,
    load_mimic_cxr,
    load_mimic_cxr_vqa,
    load_ms_cxr,
    load_slake,
    load_vindr,
    load_vqa_rad,
    parse_report_sections,
)
from data_pipelines.adapters.chestxray14 import expand_bracket_header
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


# ------------------------------------------------------------------------------------------------ VinDr

KAGGLE_HEADER = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
IMG_A, IMG_B = "9a5094b2563a1ef3ff50dc5c7ff71345", "50a418190bc3fb1ef1633bf9678929b3"


def _dicom(path, w=30, h=20):
    return rf.write_dicom(
        path,
        np.random.default_rng(0).integers(0, 4096, (h, w)).astype(np.uint16),
        photometric="MONOCHROME1",
        bits_stored=12,
    )


def test_vindr_kaggle_multi_reader_boxes(tmp_path):
    rf.write_csv(
        tmp_path / "train.csv",
        KAGGLE_HEADER,
        [
            (IMG_A, "Cardiomegaly", 3, "R10", 691.0, 1375.0, 1653.0, 1831.0),
            (IMG_A, "Aortic enlargement", 0, "R10", 1200.0, 500.0, 1400.0, 800.0),
            (IMG_A, "Cardiomegaly", 3, "R9", 700.5, 1380.0, 1650.0, 1820.0),
            (IMG_A, "No finding", 14, "R8", "", "", "", ""),
            (IMG_B, "No finding", 14, "R11", "", "", "", ""),
            (IMG_B, "No finding", 14, "R7", "", "", "", ""),
        ],
    )
    for image_id in (IMG_A, IMG_B):
        _dicom(tmp_path / "train" / f"{image_id}.dicom")
    out = {e.example_id: e for e in load_vindr(tmp_path)}
    cardio = out[f"vindr-cxr/{IMG_A}/grounding/Cardiomegaly"]
    assert [b.as_tuple() for b in cardio.boxes] == [(691.0, 1375.0, 1653.0, 1831.0), (700.5, 1380.0, 1650.0, 1820.0)]
    assert cardio.meta["box_rad_ids"] == ("R10", "R9") and {b.label for b in cardio.boxes} == {"Cardiomegaly"}
    assert cardio.target == "[691, 1375, 1653, 1831]; [700, 1380, 1650, 1820]" and cardio.image_sizes == ((30, 20),)
    assert out[f"vindr-cxr/{IMG_A}/classification"].target == "Aortic enlargement|Cardiomegaly"
    assert out[f"vindr-cxr/{IMG_B}/classification"].target == "No finding"
    assert not any(e.boxes for e in out.values() if IMG_B in e.example_id)
    assert len(out) == 4
    with pytest.raises(ValueError, match="train split only"):
        list(load_vindr(tmp_path, split="test"))


def test_vindr_physionet_layout_with_image_labels(tmp_path):
    ann = tmp_path / "annotations"
    rf.write_csv(
        ann / "annotations_train.csv",
        ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"),
        [(IMG_A, "R1", "Nodule/Mass", 10, 12, 20, 22), (IMG_A, "R2", "No finding", "", "", "", "")],
    )
    rf.write_csv(
        ann / "annotations_test.csv",
        ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"),
        [(IMG_B, "R5", "Pleural effusion", 1, 2, 3, 4)],
    )
    labels = {"R1": {"Nodule/Mass", "Lung tumor"}, "R2": {"No finding"}}
    rf.write_csv(
        ann / "image_labels_train.csv",
        ("image_id", "rad_id", *rf.VINDR_28),
        [(IMG_A, r, *(int(n in found) for n in rf.VINDR_28)) for r, found in labels.items()],
    )
    _dicom(tmp_path / "train" / f"{IMG_A}.dicom")
    _dicom(tmp_path / "test" / f"{IMG_B}.dicom", w=11, h=13)
    out = list(load_vindr(tmp_path))
    cls = [e for e in out if e.task == "classification"]
    assert [(e.split, e.target) for e in cls] == [("train", "Nodule/Mass|Lung tumor"), ("test", "Pleural effusion")]
    assert [e.image_sizes for e in load_vindr(tmp_path, split="test", tasks=("grounding",))] == [((11, 13),)]


def test_vindr_missing_column_names_the_file(tmp_path):
    rf.write_csv(tmp_path / "train.csv", ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max"), [])
    with pytest.raises(MissingColumnError, match=r"train\.csv.*y_max"):
        list(load_vindr(tmp_path))


# ----------------------------------------------------------------------------------------------- MS-CXR


def test_ms_cxr_groups_boxes_by_phrase(tmp_path):
    d1, d2 = "c1aec6b5-1a4b8e2a-bbb8f7d1-5b1c4d9e-8f2a6b3c", "0f3c5e2a-1b2c3d4e-5f6a7b8c-9d0e1f2a-3b4c5d6e"
    p1 = "files/p15/p15451130/s56960634/" + d1 + ".jpg"
    p2 = "files/p11/p11111111/s52222222/" + d2 + ".jpg"
    rf.write_csv(
        tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.1.0.csv",
        rf.MS_CXR_HEADER,
        [
            (d1, 15451130, 56960634, "Pneumonia", "bilateral opacities", p1, 100, 200, 50, 60, 40, 30, "train"),
            (d1, 15451130, 56960634, "Pneumonia", "bilateral opacities", p1, 300, 210, 40, 55, 40, 30, "train"),
            (d1, 15451130, 56960634, "Pleural Effusion", "small left effusion", p1, 320, 400, 70, 30, 40, 30, "train"),
            (d2, 11111111, 52222222, "Cardiomegaly", "enlarged heart", p2, 10.5, 20, 30, 40.25, 12, 12, "test"),
        ],
    )
    rf.write_jpeg(tmp_path / "mimic" / p1, rf.tiny_gray(40, 30))
    rf.write_jpeg(tmp_path / "mimic" / p2, rf.tiny_gray(12, 12))
    out = list(load_ms_cxr(tmp_path / "ms", mimic_root=tmp_path / "mimic", tasks=("grounding", "referring")))
    assert [e.task for e in out] == ["grounding", "referring"] * 3
    g = out[0]
    assert g.prompt.endswith("bilateral opacities")
    assert [b.as_tuple() for b in g.boxes] == [(100, 200, 150, 260), (300, 210, 340, 265)]
    assert {b.label for b in g.boxes} == {"Pneumonia"} and g.image_sizes == ((40, 30),)
    assert out[1].target == "bilateral opacities" and "[100, 200, 150, 260]" in out[1].prompt
    assert out[4].boxes[0].as_tuple() == (10.5, 20.0, 40.5, 60.25) and out[4].split == "test"
    assert [e.split for e in load_ms_cxr(tmp_path / "ms", mimic_root=tmp_path / "mimic", split="test")] == ["test"]


# ------------------------------------------------------------------------------------------ ChestX-ray14


def test_chestxray14_header_quirks_and_infiltrate_spelling(tmp_path):
    rows = [
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.14300000000000002,0.14300000000000002",
        "00000001_001.png,Cardiomegaly|Emphysema,1,1,058Y,M,AP,2894,2729,0.143,0.143",
        "00000003_000.png,No Finding,0,3,81,F,PA,2582,2991,0.143,0.143",
    ]
    (tmp_path / "Data_Entry_2017.csv").write_text(rf.CXR14_ENTRY_HEADER + ",\n" + "\n".join(r + "," for r in rows))
    (tmp_path / "BBox_List_2017.csv").write_text(
        rf.CXR14_BBOX_HEADER
        + "\n"
        + "\n".join(
            [
                "00000001_000.png,Cardiomegaly,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661",
                "00000003_000.png,Infiltrate,10,20,30,40",
                "00000003_000.png,Infiltrate,50,60,5,6",
            ]
        )
        + "\n"
    )
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    for i, name in enumerate(["00000001_000.png", "00000001_001.png", "00000003_000.png"]):
        rf.write_png(tmp_path / f"images_00{i + 1}" / "images" / name, rf.tiny_gray(16, 16, seed=i))
    out = list(load_chestxray14(tmp_path))
    cls = [e for e in out if e.task == "classification"]
    assert [(e.target, e.split, e.meta["view"], e.meta["age"]) for e in cls] == [
        ("Cardiomegaly", "train", "PA", 57),
        ("Cardiomegaly|Emphysema", "train", "AP", 58),
        ("No Finding", "test", "PA", 81),
    ]
    assert cls[0].meta["original_size"] == (2682, 2749) and cls[0].image_sizes == ((16, 16),)
    grd = {e.example_id: e for e in out if e.task == "grounding"}
    inf = grd["chestxray14/00000003_000.png/grounding/Infiltration"]
    assert [b.as_tuple() for b in inf.boxes] == [(10, 20, 40, 60), (50, 60, 55, 66)]
    assert inf.meta["source_label"] == "Infiltrate" and inf.boxes[0].label == "Infiltration"
    x, y, w, h = 225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661
    assert grd["chestxray14/00000001_000.png/grounding/Cardiomegaly"].boxes[0].as_tuple() == (x, y, x + w, y + h)
    assert len(list(load_chestxray14(tmp_path, split="test", tasks=("classification",)))) == 1
    assert expand_bracket_header(["Image Index", "OriginalImage[Width,Height]", "Bbox [x]"]) == [
        "Image Index",
        "OriginalImage[Width]",
        "OriginalImage[Height]",
        "Bbox [x]",
    ]  # a re-quoted header cell


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


# --------------------------------------------------------------------------------------------------- VQA


def test_mimic_cxr_vqa_and_medical_diff_vqa(tmp_path):
    mimic = tmp_path / "mimic"
    prior = dict(
        subject=10000032,
        study=50000001,
        split="train",
        images=[("aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee", "PA", (10, 12))],
    )
    current = dict(
        subject=10000032,
        study=50414267,
        split="train",
        images=[
            ("11111111-22222222-33333333-44444444-55555555", "LATERAL", (14, 12)),
            ("66666666-77777777-88888888-99999999-00000000", "AP", (12, 14)),
        ],
    )
    rf.write_mimic_cxr(mimic, [prior, current])
    vqa = tmp_path / "vqa"
    rel = "p10/p10000032/s50414267/66666666-77777777-88888888-99999999-00000000.jpg"
    rf.write_json(
        vqa / "train.json",
        [
            {
                "split": "train",
                "idx": 7,
                "image_id": "66666666",
                "question": "Is there  evidence of atelectasis?",
                "content_type": "presence",
                "semantic_type": "verify",
                "template": "...",
                "answer": ["yes"],
                "subject_id": "10000032",
                "study_id": "50414267",
                "image_path": rel,
            },
            {
                "split": "train",
                "idx": 8,
                "image_id": "66666666",
                "question": "Which abnormalities are in the left lung?",
                "content_type": "abnormality",
                "semantic_type": "query",
                "answer": ["atelectasis", "effusion"],
                "image_path": rel,
            },
        ],
    )
    rf.write_json(vqa / "test.json", [{"idx": 9, "question": "q?", "answer": "no", "image_path": rel}])
    out = list(load_mimic_cxr_vqa(vqa, mimic_root=mimic, split="train"))
    assert [(e.prompt, e.target, e.question_type) for e in out] == [
        ("Is there evidence of atelectasis?", "yes", "presence"),
        ("Which abnormalities are in the left lung?", "atelectasis|effusion", "abnormality"),
    ]
    assert out[0].images[0].endswith(rel) and out[0].image_sizes == ((12, 14),)
    rf.write_json(vqa / "valid.json", [{"question": "q?", "answer": "no"}])
    with pytest.raises(MissingColumnError, match=r"valid\.json item 0.*image_path"):
        list(load_mimic_cxr_vqa(vqa, mimic_root=mimic))

    rf.write_csv(
        tmp_path / "diff" / "mimic_pair_questions.csv",
        rf.DIFF_VQA_HEADER,
        [
            (
                50414267,
                10000032,
                50000001,
                "difference",
                "what has changed compared to the reference image?",
                "the main image has additional findings of effusion than the reference image. ",
                "train",
            ),
            (50414267, 10000032, 50000001, "presence", "is there evidence of effusion in this image?", "yes", "test"),
        ],
    )
    diff = list(load_medical_diff_vqa(tmp_path / "diff", mimic_root=mimic))
    assert [(e.task, e.question_type, e.split) for e in diff] == [
        ("difference", "difference", "train"),
        ("vqa", "presence", "test"),
    ]
    first, second = diff
    assert first.images[0].endswith("s50000001/aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee.jpg")  # prior first
    assert first.images[1].endswith("s50414267/66666666-77777777-88888888-99999999-00000000.jpg")  # AP over LATERAL
    assert first.image_sizes == ((10, 12), (12, 14)) and len(second.images) == 1
    assert first.target == "the main image has additional findings of effusion than the reference image."


def test_vqa_rad_chest_only_and_slake_english_xray_only(tmp_path):
    rad = tmp_path / "rad"
    rf.write_json(
        rad / "VQA_RAD Dataset Public.json",
        [
            {
                "qid": 1,
                "image_name": "synpic54610.jpg",
                "image_organ": "CHEST",
                "question": "Is there a pneumothorax?",
                "question_rephrase": "NULL",
                "question_type": "PRES",
                "answer": "No",
                "answer_type": "CLOSED",
                "phrase_type": "freeform",
            },
            {
                "qid": 2,
                "image_name": "synpic54610.jpg",
                "image_organ": "CHEST ",
                "question": "How many ribs?",
                "question_type": "COUNT",
                "answer": 12,
                "answer_type": "OPEN",
                "phrase_type": "test_freeform",
            },
            {
                "qid": 3,
                "image_name": "synpic100.jpg",
                "image_organ": "HEAD",
                "question": "Is this a CT?",
                "question_type": "MODALITY",
                "answer": "yes",
                "answer_type": "CLOSED",
                "phrase_type": "freeform",
            },
        ],
    )
    rf.write_jpeg(rad / "VQA_RAD Image Folder" / "synpic54610.jpg", rf.tiny_gray(6, 5))
    out = list(load_vqa_rad(rad))
    assert [(e.example_id, e.target, e.split, e.question_type) for e in out] == [
        ("vqa-rad/1", "No", "train", "PRES"),
        ("vqa-rad/2", "12", "test", "COUNT"),
    ]
    slake = tmp_path / "slake"
    item = dict(
        img_id=384,
        img_name="xmlab384/source.jpg",
        question="Is the lung healthy?",
        answer="No",
        q_lang="en",
        location="Lung",
        modality="X-Ray",
        answer_type="CLOSED",
        base_type="vqa",
        content_type="Abnormality",
        triple=["vhead", "_", "_"],
        qid=1,
    )
    rf.write_json(
        slake / "train.json",
        [item, dict(item, q_lang="zh", qid=2, question="肺部健康吗?"), dict(item, modality="CT", qid=3)],
    )
    rf.write_json(slake / "test.json", [dict(item, qid=4)])
    rf.write_jpeg(slake / "imgs" / "xmlab384" / "source.jpg", rf.tiny_gray(8, 8))
    out = list(load_slake(slake))
    assert [(e.example_id, e.split, e.question_type) for e in out] == [
        ("slake/1", "train", "Abnormality"),
        ("slake/4", "test", "Abnormality"),
    ]
    assert [e.example_id for e in load_slake(slake, split="test")] == ["slake/4"]


# ----------------------------------------------------------------------------------------------- generic


def test_generic_jsonl_and_parquet_with_embedded_images(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rf.write_png(tmp_path / "img" / "a.png", rf.tiny_gray(5, 4))
    rf.write_png(tmp_path / "img" / "b.png", rf.tiny_gray(6, 4))
    records = [
        {
            "id": "x1",
            "image": ["img/a.png", "img/b.png"],
            "problem": "What changed?",
            "solution": "new effusion",
            "type": "diff_vqa",
            "split": "test",
        },
        {"id": "x2", "image": "img/a.png", "problem": "Findings?", "solution": "Clear lungs.", "type": "report"},
    ]
    (tmp_path / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    cols = GenericColumns(images="image", question="problem", answer="solution", task="type")
    out = list(load_generic(tmp_path / "bench.jsonl", columns=cols, dataset="xraybench"))
    assert [(e.example_id, e.task, len(e.images), e.target) for e in out] == [
        ("x1", "difference", 2, "new effusion"),
        ("x2", "findings", 1, "Clear lungs."),
    ]
    assert out[0].image_sizes == ((5, 4), (6, 4))
    assert [e.example_id for e in load_generic(tmp_path / "bench.jsonl", columns=cols, tasks=("findings",))] == ["x2"]

    png = io.BytesIO()
    Image.fromarray(np.full((3, 7), 51, np.uint8)).save(png, format="PNG")
    table = pa.table(
        {
            "images": [[{"bytes": png.getvalue(), "path": "embedded.png"}]],
            "question": ["q"],
            "answer": [["left", "right"]],
            "task": ["vqa"],
        }
    )
    pq.write_table(table, tmp_path / "bench.parquet")
    (ex,) = load_generic(tmp_path / "bench.parquet")
    assert isinstance(ex.images[0], np.ndarray) and ex.image_sizes == ((7, 3),) and ex.target == "left|right"
    np.testing.assert_allclose(ex.images[0], 0.2, atol=1e-7)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(MissingColumnError, match=r"bad\.jsonl record 1.*images"):
        list(load_generic(tmp_path / "bad.jsonl"))
    (tmp_path / "odd.jsonl").write_text(
        json.dumps({"images": "img/a.png", "question": "q", "answer": "a", "task": "poetry"}) + "\n"
    )
    with pytest.raises(ValueError, match="task_aliases"):
        list(load_generic(tmp_path / "odd.jsonl"))


def test_registry_lists_every_adapter():
    assert set(ADAPTERS) == {
        "mimic_cxr",
        "chexpert",
        "chexpert_plus",
        "vindr",
        "ms_cxr",
        "chestxray14",
        "iu_xray",
        "mimic_cxr_vqa",
        "medical_diff_vqa",
        "vqa_rad",
        "slake",
        "generic",
    }
    with pytest.raises(KeyError, match="unknown dataset adapter"):
        load_dataset("padchest", "/nowhere")


# -------------------------------------------------------------------------------- real files from PyPI


@pytest.fixture(scope="session")
def txv_wheel():
    wheel, reason = rf.fetch_wheel("torchxrayvision")
    if wheel is None:
        pytest.skip(reason)
    return wheel


def _txv(wheel, name):
    return rf.wheel_member(wheel, rf.TXV_DATA + name)


def test_real_chexpert_rows(txv_wheel, tmp_path):
    pd = pytest.importorskip("pandas")
    real = _txv(txv_wheel, "chexpert_train.csv.gz")
    lines = rf.head_lines(real, 301)
    (tmp_path / "CheXpert-v1.0-small").mkdir()
    (tmp_path / "CheXpert-v1.0-small" / "train.csv").write_text("".join(lines))
    out = list(load_chexpert(tmp_path, missing_images="allow"))
    ref = pd.read_csv(real, nrows=300)
    assert len(out) == 300 and [e.example_id for e in out] == ["chexpert/" + p for p in ref["Path"]]
    np.testing.assert_array_equal(
        np.stack([e.labels for e in out]), ref[list(rf.CHEXPERT_TRAIN_ORDER)].to_numpy(np.float32)
    )
    assert [e.meta["ap_pa"] for e in out] == ref["AP/PA"].fillna("").tolist()


def test_real_vinbigdata_train(txv_wheel, tmp_path):
    pd = pytest.importorskip("pandas")
    real = _txv(txv_wheel, "vinbigdata-train.csv.gz")
    (tmp_path / "train.csv.gz").symlink_to(real)
    out = list(load_vindr(tmp_path, missing_images="allow"))
    ref = pd.read_csv(real)
    cls = [e for e in out if e.task == "classification"]
    assert len(cls) == ref["image_id"].nunique() == 15_000
    assert {len(e.meta["reader_findings"]) for e in cls} == {3}
    with_box = ref.dropna(subset=["x_min"])
    assert sum(len(e.boxes) for e in out) == len(with_box)
    assert {b.label for e in out for b in e.boxes} == set(with_box["class_name"]) and "No finding" not in {
        b.label for e in out for b in e.boxes
    }
    first = with_box.iloc[0]
    (ex,) = [e for e in out if e.example_id == f"vindr-cxr/{first.image_id}/grounding/{first.class_name}"]
    assert (first.x_min, first.y_min, first.x_max, first.y_max) in [b.as_tuple() for b in ex.boxes]
    no_finding_images = set(ref["image_id"]) - set(with_box["image_id"])
    assert {e.meta["image_id"] for e in cls if e.target == "No finding"} == no_finding_images


def test_real_chestxray14_entries_and_boxes(txv_wheel, tmp_path):
    pd = pytest.importorskip("pandas")
    entry, bbox = _txv(txv_wheel, "Data_Entry_2017_v2020.csv.gz"), _txv(txv_wheel, "BBox_List_2017.csv.gz")
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").symlink_to(entry)
    (tmp_path / "BBox_List_2017.csv.gz").symlink_to(bbox)
    ref = pd.read_csv(entry)
    assert list(ref.columns[-4:]) == ["OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]  # quirk
    cls = list(load_chestxray14(tmp_path, tasks=("classification",), missing_images="allow"))
    assert len(cls) == len(ref) == 112_120
    assert sum(e.meta["view"] == "PA" for e in cls) == 67_310
    head = ref.head(200)
    assert [e.target for e in cls[:200]] == head["Finding Labels"].tolist()
    assert [e.meta["original_size"] for e in cls[:200]] == list(zip(head["OriginalImage[Width"], head["Height]"]))
    assert [e.meta["age"] for e in cls[:200]] == head["Patient Age"].tolist()
    boxes = pd.read_csv(bbox)
    assert list(boxes.columns[:3]) == ["Image Index", "Finding Label", "Bbox [x"] and len(boxes.columns) == 9
    grd = list(load_chestxray14(tmp_path, tasks=("grounding",), missing_images="allow"))
    assert sum(len(e.boxes) for e in grd) == len(boxes) == 984
    assert len({e.images[0] for e in grd}) == boxes["Image Index"].nunique() == 880
    assert sum(len(e.boxes) for e in grd if e.meta["source_label"] == "Infiltrate") == 123
    assert {b.label for e in grd for b in e.boxes} == {
        "Atelectasis",
        "Effusion",
        "Cardiomegaly",
        "Infiltration",
        "Pneumonia",
        "Pneumothorax",
        "Mass",
        "Nodule",
    }
    row = boxes.iloc[0]
    x, y, w, h = row.iloc[2:6].astype(float)
    (ex,) = [
        e for e in grd if e.images[0].endswith(row["Image Index"]) and e.meta["source_label"] == row["Finding Label"]
    ]
    assert (x, y, x + w, y + h) in [b.as_tuple() for b in ex.boxes] and ex.image_sizes == ((1024, 1024),)


def test_real_iu_xray_reports(txv_wheel, tmp_path):
    archive = _txv(txv_wheel, "NLMCXR_reports.tgz")
    allowed = list(load_iu_xray(archive, images_dir=tmp_path / "png", missing_images="allow"))
    # Counts from data.md §1.7 (3,425 reports with FINDINGS, 3,921 with IMPRESSION), less the reports without images
    with tarfile.open(archive) as tar:
        raw = {m.name: tar.extractfile(m).read().decode() for m in tar if m.isfile()}
    section = lambda xml, label: re.search(rf'<AbstractText Label="{label}">(.*?)</AbstractText>', xml, re.S)
    no_images = [x for x in raw.values() if "<parentImage" not in x]
    assert len(raw) == 3955
    assert sum(e.task == "findings" for e in allowed) == 3425 - sum(bool(section(x, "FINDINGS")) for x in no_images)
    assert sum(e.task == "impression" for e in allowed) == 3921 - sum(bool(section(x, "IMPRESSION")) for x in no_images)
    for number in (1, 10):  # give two reports their images: only they survive missing_images="skip"
        for image_id in re.findall(r'<parentImage id="([^"]+)"', raw[f"ecgen-radiology/{number}.xml"]):
            rf.write_png(tmp_path / "png" / f"{image_id}.png", rf.tiny_gray(4, 4))
    kept = list(load_iu_xray(archive, images_dir=tmp_path / "png", missing_images="skip"))
    assert {e.meta["uid"] for e in kept} == {"CXR1", "CXR10"}
    for e in kept:
        xml = raw[f"ecgen-radiology/{e.meta['uid'][3:]}.xml"]
        assert e.target == " ".join(section(xml, e.task.upper()).group(1).split())
