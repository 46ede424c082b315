"""Bad input through the data layer: every case gives a clear error naming the file (and record), or, when the
caller opts in, a skip that is logged once per skipped example; never a silent wrong example.

Fixtures are written in the real formats by tests/helpers/real_formats.py; expected values come from the values
passed to the writers (or plain-Python references), never from the adapters under test.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re

import numpy as np
import pytest
from helpers import real_formats as rf

from data_pipelines.adapters import (
    MissingColumnError,
    load_chestxray14,
    load_chexpert,
    load_iu_xray,
    load_mimic_cxr,
    load_ms_cxr,
    load_vindr,
)
from data_pipelines.image_io import ImageReadError, load_image

ADAPTER_LOG = "data_pipelines.adapters"


def _skips(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ADAPTER_LOG and "skipping" in r.getMessage()]


# ----------------------------------------------------------------------------------------- image files


def _good_image(tmp_path, kind):
    gray = rf.tiny_gray(40, 32, seed=3)
    if kind == "jpeg":
        return rf.write_jpeg(tmp_path / "good.jpg", gray)
    if kind == "png":
        return rf.write_png(tmp_path / "good.png", gray)
    stored = np.random.default_rng(3).integers(0, 4096, (32, 40)).astype(np.uint16)
    return rf.write_dicom(tmp_path / "good.dcm", stored, bits_stored=12)


def _damage(data: bytes, how: str, kind: str) -> bytes:
    if how == "truncated_half":
        return data[: len(data) // 2]
    if how == "truncated_tail":  # cut into the pixel data (a PNG's last 12 bytes are only the IEND chunk)
        return data[: len(data) - 40]
    if how == "corrupt_header":  # magic bytes overwritten: JPEG SOI, PNG signature, DICOM 'DICM' + file meta
        start = 128 if kind == "dicom" else 0
        return data[:start] + bytes([0xA5]) * 48 + data[start + 48 :]
    if how == "noise":
        return bytes(np.random.default_rng(5).integers(0, 256, len(data), dtype=np.uint8))
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated_half", "truncated_tail", "corrupt_header", "noise"])
@pytest.mark.parametrize("kind", ["jpeg", "png", "dicom"])
def test_damaged_images_raise_one_line_error_naming_the_path(tmp_path, kind, how):
    good = _good_image(tmp_path, kind)
    assert load_image(good).shape == (32, 40)  # the undamaged file reads
    bad = tmp_path / f"damaged_{how}{good.suffix}"
    bad.write_bytes(_damage(good.read_bytes(), how, kind))
    with pytest.raises(ImageReadError) as info:
        load_image(bad)
    message = str(info.value)
    assert message.startswith(f"cannot read image {bad}: ") and "\n" not in message, message
    assert info.value.path == str(bad) and info.value.reason


# ------------------------------------------------------------------------------------ table fixtures


def _read_table(path):
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def _edit_column(path, column, new_name=None):
    """Renames `column` (new_name) or drops it with its cells (new_name=None), keeping the file's format."""
    header, rows = _read_table(path)
    i = header.index(column)
    if new_name is None:
        header, rows = header[:i] + header[i + 1 :], [r[:i] + r[i + 1 :] for r in rows]
    else:
        header = header[:i] + [new_name] + header[i + 1 :]
    rf.write_csv(path, header, rows)


MIMIC_STUDY = dict(
    subject=10000032,
    study=50414267,
    split="train",
    images=[("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA", (24, 20))],
    report=rf.mimic_report("The lungs are clear.", "No acute process."),
    labels={"No Finding": 1.0, "Edema": 0.0},
)
MIMIC_STUDY_2 = dict(
    subject=10000764,
    study=57375967,
    split="train",
    images=[("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP", (16, 16))],
    report=rf.mimic_report("Small left effusion.", "Effusion."),
    labels={"Edema": 1.0},
)
CHEXPERT_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *rf.CHEXPERT_TRAIN_ORDER)
CHEXPERT_REL = (
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
    "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg",
)
VINDR_HEADER = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
IMG_A, IMG_B = "9a5094b2563a1ef3ff50dc5c7ff71345", "50a418190bc3fb1ef1633bf9678929b3"
MS_PATHS = (
    "files/p15/p15451130/s56960634/c1aec6b5-1a4b8e2a-bbb8f7d1-5b1c4d9e-8f2a6b3c.jpg",
    "files/p11/p11111111/s52222222/0f3c5e2a-1b2c3d4e-5f6a7b8c-9d0e1f2a-3b4c5d6e.jpg",
)


def _mimic(root, studies=(MIMIC_STUDY, MIMIC_STUDY_2), **kw):
    rf.write_mimic_cxr(root, list(studies), **kw)
    return root


def _chexpert(root, label_cells=(("1.0", "0.0"), ("-1.0", "")), write_images=True):
    """Two rows; label_cells[i] are the cells of No Finding and Cardiomegaly of row i (others empty)."""
    rows = []
    for rel, (no_finding, cardio) in zip(CHEXPERT_REL, label_cells):
        cells = dict.fromkeys(rf.CHEXPERT_TRAIN_ORDER, "")
        cells.update({"No Finding": no_finding, "Cardiomegaly": cardio})
        rows.append((rel, "Female", 68, "Frontal", "AP", *cells.values()))
        if write_images:
            rf.write_jpeg(root / rel, rf.tiny_gray(10, 14))
    rf.write_csv(root / "CheXpert-v1.0-small" / "train.csv", CHEXPERT_HEADER, rows)
    return root


def _dicom(path, w=30, h=20):
    return rf.write_dicom(path, np.random.default_rng(0).integers(0, 4096, (h, w)).astype(np.uint16), bits_stored=12)


def _vindr(root, boxes, sizes=None, write_images=True):
    """boxes: (image_id, class, rad_id, x_min, y_min, x_max, y_max) rows of the Kaggle train.csv."""
    rf.write_csv(root / "train.csv", VINDR_HEADER, [(i, n, 0, r, *xyxy) for i, n, r, *xyxy in boxes])
    if write_images:
        for image_id, (w, h) in (sizes or {IMG_A: (30, 20), IMG_B: (30, 20)}).items():
            _dicom(root / "train" / f"{image_id}.dicom", w, h)
    return root


def _ms_cxr(root, boxes=((2, 3, 10, 8), (20, 4, 5, 6)), write_images=True):
    """One phrase per image; boxes[i] is the (x, y, w, h) of image i, both images 40 x 30."""
    rows = [
        (p.rsplit("/", 1)[1][:-4], 1, 2, "Pneumonia", f"opacity {i}", p, *box, 40, 30, "train")
        for i, (p, box) in enumerate(zip(MS_PATHS, boxes))
    ]
    rf.write_csv(root / "MS_CXR_Local_Alignment_v1.1.0.csv", rf.MS_CXR_HEADER, rows)
    if write_images:
        for p in MS_PATHS:
            rf.write_jpeg(root / p, rf.tiny_gray(40, 30))
    return root


# ------------------------------------------------------------------------------------- missing columns

COLUMN_CASES = {  # name: (build(root) -> root, load(root) -> iterator, csv file name, column, new name or None)
    "mimic_metadata_renamed": (
        _mimic,
        lambda r: load_mimic_cxr(r),
        "mimic-cxr-2.0.0-metadata.csv.gz",
        "ViewPosition",
        "View Position",
    ),
    "mimic_split_missing": (_mimic, lambda r: load_mimic_cxr(r), "mimic-cxr-2.0.0-split.csv.gz", "split", None),
    "mimic_labels_renamed": (
        _mimic,
        lambda r: load_mimic_cxr(r, tasks=("classification",)),
        "mimic-cxr-2.0.0-chexpert.csv.gz",
        "Pleural Effusion",
        "Effusion",
    ),
    "chexpert_label_missing": (
        _chexpert,
        lambda r: load_chexpert(r),
        "CheXpert-v1.0-small/train.csv",
        "Cardiomegaly",
        None,
    ),
    "chexpert_path_renamed": (
        _chexpert,
        lambda r: load_chexpert(r),
        "CheXpert-v1.0-small/train.csv",
        "Frontal/Lateral",
        "Frontal Lateral",
    ),
    "vindr_renamed": (
        lambda r: _vindr(r, [(IMG_A, "Cardiomegaly", "R1", 1, 2, 3, 4)]),
        lambda r: load_vindr(r),
        "train.csv",
        "x_min",
        "xmin",
    ),
    "ms_cxr_missing": (_ms_cxr, lambda r: load_ms_cxr(r), "MS_CXR_Local_Alignment_v1.1.0.csv", "label_text", None),
}


@pytest.mark.parametrize("case", sorted(COLUMN_CASES))
def test_missing_or_renamed_column_names_file_and_column(tmp_path, case):
    build, load, file_name, column, new_name = COLUMN_CASES[case]
    root = build(tmp_path / "data")
    assert list(load(root))  # the intact files load
    _edit_column(root / file_name, column, new_name)
    with pytest.raises(MissingColumnError) as info:
        list(load(root))
    message = str(info.value)
    assert str(root / file_name) in message and repr(column) in message, message
    if new_name is not None:
        assert repr(new_name) in message, message  # the columns found are listed, so the rename is visible


# ------------------------------------------------------------------------------------------------ boxes


def _outside(xyxy, size):
    """Plain-Python reference: indices of boxes reaching outside [0, w] x [0, h]."""
    w, h = size
    return tuple(i for i, (x1, y1, x2, y2) in enumerate(xyxy) if x1 < 0 or y1 < 0 or x2 > w or y2 > h)


@pytest.mark.parametrize("xyxy", [(20, 2, 10, 8), (2, 18, 10, 8)])
def test_vindr_inverted_box_raises_naming_file_image_and_reader(tmp_path, xyxy):
    root = _vindr(tmp_path, [(IMG_A, "Nodule/Mass", "R1", 1, 1, 5, 5), (IMG_B, "Nodule/Mass", "R7", *xyxy)])
    with pytest.raises(ValueError, match=re.escape(str(root / "train.csv"))) as info:
        list(load_vindr(root))
    assert IMG_B in str(info.value) and "R7" in str(info.value) and "x_max < x_min" in str(info.value)


def test_vindr_boxes_outside_the_image_are_kept_and_flagged(tmp_path):
    boxes = [(1, 1, 29, 19), (-2, 3, 10, 8), (5, 5, 31, 10), (0, 0, 30, 20), (40, 30, 50, 45)]
    root = _vindr(tmp_path, [(IMG_A, "Nodule/Mass", f"R{i}", *b) for i, b in enumerate(boxes)])
    (grounding,) = [e for e in load_vindr(root) if e.task == "grounding"]
    assert [b.as_tuple() for b in grounding.boxes] == [tuple(map(float, b)) for b in boxes]  # not clipped
    assert grounding.meta["boxes_outside_image"] == _outside(boxes, (30, 20)) == (1, 2, 4)


def test_ms_cxr_negative_size_raises_and_outside_boxes_are_flagged(tmp_path):
    root = _ms_cxr(tmp_path / "neg", boxes=((2, 3, 10, 8), (20, 4, -5, 6)))
    with pytest.raises(ValueError, match=re.escape(str(root / "MS_CXR_Local_Alignment_v1.1.0.csv"))) as info:
        list(load_ms_cxr(root))
    assert "0f3c5e2a-1b2c3d4e-5f6a7b8c-9d0e1f2a-3b4c5d6e" in str(info.value) and "negative" in str(info.value)
    boxes = ((2, 3, 10, 8), (35, 4, 10, 6))  # the second reaches x = 45 > width 40
    out = list(load_ms_cxr(_ms_cxr(tmp_path / "out", boxes=boxes)))
    for e, (x, y, w, h) in zip(out, boxes):
        assert e.boxes[0].as_tuple() == (x, y, x + w, y + h)
        assert e.meta["boxes_outside_image"] == _outside([(x, y, x + w, y + h)], (40, 30))
    assert [e.meta["boxes_outside_image"] for e in out] == [(), (0,)]


def test_chestxray14_negative_size_raises_and_outside_boxes_are_flagged(tmp_path):
    name = "00000001_000.png"
    rf.write_png(tmp_path / "images" / name, rf.tiny_gray(16, 16))
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text(rf.CXR14_BBOX_HEADER + f"\n{name},Nodule,2,3,4,-1\n")
    with pytest.raises(ValueError, match=re.escape(str(bbox))) as info:
        list(load_chestxray14(tmp_path, tasks=("grounding",)))
    assert name in str(info.value) and "Nodule" in str(info.value)
    bbox.write_text(rf.CXR14_BBOX_HEADER + f"\n{name},Nodule,2,3,4,5\n{name},Nodule,10,3,8,5\n")
    (e,) = load_chestxray14(tmp_path, tasks=("grounding",))
    assert e.meta["boxes_outside_image"] == _outside([(2, 3, 6, 8), (10, 3, 18, 8)], (16, 16)) == (1,)


# ---------------------------------------------------------------------------------------------- reports


@pytest.mark.parametrize("text", ["", " \n \n"])
def test_mimic_empty_report_raises_or_is_skipped_with_a_warning(tmp_path, caplog, text):
    root = _mimic(tmp_path, [dict(MIMIC_STUDY, report=text), MIMIC_STUDY_2])
    report = rf.mimic_subject_dir(root, MIMIC_STUDY["subject"], MIMIC_STUDY["study"]).with_suffix(".txt")
    with pytest.raises(FileNotFoundError, match=re.escape(str(report))) as info:
        list(load_mimic_cxr(root))
    assert "empty" in str(info.value) and str(MIMIC_STUDY["study"]) in str(info.value)
    with caplog.at_level(logging.WARNING, logger=ADAPTER_LOG):
        out = list(load_mimic_cxr(root, tasks=("findings", "impression", "classification"), skip_missing_reports=True))
    assert [e.example_id for e in out] == [
        "mimic-cxr/s50414267/classification",
        "mimic-cxr/s57375967/findings",
        "mimic-cxr/s57375967/impression",
        "mimic-cxr/s57375967/classification",
    ]
    (skip,) = _skips(caplog)
    assert str(report) in skip and "empty" in skip


def test_mimic_missing_report_raises_or_is_skipped_with_a_warning(tmp_path, caplog):
    root = _mimic(tmp_path, [dict(MIMIC_STUDY, report=None), MIMIC_STUDY_2])
    report = rf.mimic_subject_dir(root, MIMIC_STUDY["subject"], MIMIC_STUDY["study"]).with_suffix(".txt")
    with pytest.raises(FileNotFoundError, match=re.escape(str(report))):
        list(load_mimic_cxr(root))
    with caplog.at_level(logging.WARNING, logger=ADAPTER_LOG):
        out = list(load_mimic_cxr(root, skip_missing_reports=True))
    assert [e.target for e in out] == ["Small left effusion.", "Effusion."]
    (skip,) = _skips(caplog)
    assert str(report) in skip and "not found" in skip


def test_mimic_report_without_findings_yields_only_its_impression(tmp_path):
    """Documented: a report without a FINDINGS section is valid and yields no findings example."""
    root = _mimic(tmp_path, [dict(MIMIC_STUDY, report=rf.mimic_report(None, "No acute process."))])
    assert [(e.task, e.target) for e in load_mimic_cxr(root)] == [("impression", "No acute process.")]


@pytest.mark.parametrize("content", [b"", b"<eCitation><uId id='CXR3'/>", b"\x00\x01 not xml"])
def test_iu_xray_empty_or_broken_report_raises_naming_the_file(tmp_path, content):
    folder = tmp_path / "ecgen-radiology"
    rf.write_iu_report(folder, 1, {"FINDINGS": "Clear lungs.", "IMPRESSION": "Normal."}, ["CXR1_1_IM-0001-3001"])
    rf.write_png(tmp_path / "NLMCXR_png" / "CXR1_1_IM-0001-3001.png", rf.tiny_gray(9, 7))
    assert [e.target for e in load_iu_xray(tmp_path)] == ["Clear lungs.", "Normal."]
    (folder / "3.xml").write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(folder / "3.xml")) + ": invalid XML"):
        list(load_iu_xray(tmp_path))


def test_iu_xray_report_with_empty_sections_yields_no_example(tmp_path):
    """Documented: one example per non-empty section; empty FINDINGS / IMPRESSION give none (not an error)."""
    folder = tmp_path / "ecgen-radiology"
    rf.write_iu_report(folder, 1, {"FINDINGS": "", "IMPRESSION": "  "}, ["CXR1_1_IM-0001-3001"])
    rf.write_iu_report(folder, 2, {"FINDINGS": "Clear.", "IMPRESSION": ""}, ["CXR2_IM-0652-1001"])
    for image_id in ("CXR1_1_IM-0001-3001", "CXR2_IM-0652-1001"):
        rf.write_png(tmp_path / "NLMCXR_png" / f"{image_id}.png", rf.tiny_gray(9, 7))
    assert [(e.example_id, e.target) for e in load_iu_xray(tmp_path)] == [("iu-xray/CXR2/findings", "Clear.")]


# ----------------------------------------------------------------------------------------------- labels


def _reference_label(cell):
    """Plain-Python CheXpert cell: empty -> NaN, numeric 1 / 0 / -1 -> float, anything else invalid (None)."""
    cell = cell.strip()
    if not cell:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if value in (1.0, 0.0, -1.0) else None


@pytest.mark.parametrize("cell", ["2.0", "maybe", "0.5", "nan", "-2", "yes", "1", " -1.0 ", "0", ""])
def test_chexpert_label_cells(tmp_path, cell):
    root = _chexpert(tmp_path, label_cells=(("1.0", "0.0"), ("0.0", cell)))
    expected = _reference_label(cell)
    if expected is None:
        with pytest.raises(ValueError) as info:
            list(load_chexpert(root))
        message = str(info.value)
        assert str(root / "CheXpert-v1.0-small" / "train.csv") in message, message
        assert "'Cardiomegaly'" in message and CHEXPERT_REL[1] in message and cell.strip() in message, message
    else:
        out = list(load_chexpert(root))
        np.testing.assert_array_equal(
            [e.labels[rf.CHEXPERT_TRAIN_ORDER.index("Cardiomegaly")] for e in out], [0.0, expected]
        )


def test_mimic_label_table_bad_value_names_file_and_study(tmp_path):
    root = _mimic(tmp_path)
    table = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    header, rows = _read_table(table)
    rows[1][header.index("Edema")] = "maybe"
    rf.write_csv(table, header, rows)
    with pytest.raises(ValueError) as info:
        list(load_mimic_cxr(root, tasks=("classification",)))
    message = str(info.value)
    assert str(table) in message and "'Edema'" in message and "'maybe'" in message, message
    assert str(MIMIC_STUDY_2["study"]) in message, message


# --------------------------------------------------------------------------------------- missing images


def _missing_cases():
    """name: (build(root) -> (root, missing image path), load(root, policy) -> iterator, examples when intact)."""

    def mimic(r):
        _mimic(r)
        return r, rf.mimic_subject_dir(r, 10000764, 57375967) / f"{MIMIC_STUDY_2['images'][0][0]}.jpg"

    def chexpert(r):
        _chexpert(r)
        return r, r / CHEXPERT_REL[1]

    def vindr(r):
        _vindr(r, [(IMG_A, "Nodule/Mass", "R1", 1, 1, 5, 5), (IMG_B, "Nodule/Mass", "R2", 2, 2, 6, 6)])
        return r, r / "train" / f"{IMG_B}.dicom"

    def ms_cxr(r):
        _ms_cxr(r)
        return r, r / MS_PATHS[0]

    def iu_xray(r):
        for n, image_id in ((1, "CXR1_1_IM-0001-3001"), (2, "CXR2_IM-0652-1001")):
            rf.write_iu_report(r / "ecgen-radiology", n, {"FINDINGS": f"Finding {n}."}, [image_id])
            rf.write_png(r / "NLMCXR_png" / f"{image_id}.png", rf.tiny_gray(9, 7))
        return r, r / "NLMCXR_png" / "CXR2_IM-0652-1001.png"

    return {
        "mimic_cxr": (mimic, lambda r, p: load_mimic_cxr(r, missing_images=p), 4),
        "chexpert": (chexpert, lambda r, p: load_chexpert(r, missing_images=p), 2),
        "vindr": (vindr, lambda r, p: load_vindr(r, missing_images=p), 4),
        "ms_cxr": (ms_cxr, lambda r, p: load_ms_cxr(r, missing_images=p), 2),
        "iu_xray": (iu_xray, lambda r, p: load_iu_xray(r, missing_images=p), 2),
    }


@pytest.mark.parametrize("name", ["mimic_cxr", "chexpert", "vindr", "ms_cxr", "iu_xray"])
def test_missing_image_error_names_the_path_and_skip_is_logged_per_example(tmp_path, caplog, name):
    build, load, n_intact = _missing_cases()[name]
    root, missing = build(tmp_path / name)
    assert len(list(load(root, "error"))) == n_intact
    missing.unlink()
    with pytest.raises(ImageReadError) as info:
        list(load(root, "error"))
    assert info.value.path == str(missing) and "file not found" in str(info.value)
    with caplog.at_level(logging.WARNING, logger=ADAPTER_LOG):
        kept = list(load(root, "skip"))
    skips = _skips(caplog)
    assert len(skips) == 1 and str(missing) in skips[0], skips  # one image -> one skipped record
    examples_per_record = n_intact // 2  # each fixture has two records with the same number of examples
    assert len(kept) == n_intact - examples_per_record
    assert all(str(missing) not in e.images for e in kept)
