"""Box adapters (VinDr-CXR in both layouts, MS-CXR, ChestX-ray14) on files written here in the exact real
formats."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import real_formats as rf

from data_pipelines.adapters import MissingColumnError, load_chestxray14, load_ms_cxr, load_vindr
from data_pipelines.adapters.chestxray14 import expand_bracket_header

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
