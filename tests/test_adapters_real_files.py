"""Adapters on the real metadata CSVs and IU-Xray reports shipped in the torchxrayvision 1.5.7 wheel
(downloaded with `pip download --no-deps`, never installed, read at test time from
~/.cache/dmx_jax/test_assets, never committed)."""

from __future__ import annotations

import re
import tarfile

import numpy as np
import pytest
from helpers import real_formats as rf

from data_pipelines.adapters import load_chestxray14, load_chexpert, load_iu_xray, load_vindr


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
