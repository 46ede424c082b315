"""Writers for tiny files in the exact real dataset formats, and the cached real assets from PyPI wheels.

Formats follow /work/shared/notes/data.md §1 (headers, layouts, label strings). Nothing here is derived from
the adapters under test; tests compare adapter output with the values passed to these writers.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# ------------------------------------------------------------------------------------------- vocabularies

CHEXPERT_TRAIN_ORDER = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
MIMIC_LABEL_ORDER = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
MIMIC_METADATA_HEADER = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
CXR14_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
CXR14_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
VINDR_28 = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
)
CHEXPERT_PLUS_HEADER = (
    "path_to_image",
    "path_to_dcm",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "patient_report_date_order",
    "report",
    "section_narrative",
    "section_clinical_history",
    "section_history",
    "section_comparison",
    "section_technique",
    "section_procedure_comments",
    "section_findings",
    "section_impression",
    "section_end_of_impression",
    "section_summary",
    "section_accession_number",
    "age",
    "sex",
    "race",
    "ethnicity",
    "split",
)
MS_CXR_HEADER = (
    "dicom_id",
    "subject_id",
    "study_id",
    "category_name",
    "label_text",
    "path",
    "x",
    "y",
    "w",
    "h",
    "image_width",
    "image_height",
    "split",
)
DIFF_VQA_HEADER = ("study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split")


# ----------------------------------------------------------------------------------------------- tables


def write_csv(path: Path, header: Sequence[str] | str, rows: Iterable[Sequence], gz: bool | None = None) -> Path:
    """CSV with the header written verbatim when given as a string (for quirky headers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if isinstance(header, str):
        buf.write(header + "\n")
    else:
        writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    data = buf.getvalue().encode()
    if gz if gz is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def label_cell(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{float(v):.1f}"


# ----------------------------------------------------------------------------------------------- images


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def write_jpeg(path: Path, array: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[Sequence[int], Sequence[int]] | None = None,
    rescale: tuple[float, float] | None = None,
    with_pixels: bool = True,
    lut_vr: str = "US",
) -> Path:
    """A single-frame CR DICOM. stored: uint16 / int16 stored values; voi_lut: (LUTDescriptor, LUTData) with
    LUTData written as VR US (a list) or OW (little-endian 16-bit words)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.set_pixel_data(np.ascontiguousarray(stored), photometric, bits_stored)
    if not with_pixels:
        del ds.PixelData
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [int(v) for v in voi_lut[0]])  # LUTDescriptor (VR US or SS)
        data = [int(v) for v in voi_lut[1]]
        if lut_vr == "OW":
            item.add_new(0x00283006, "OW", np.asarray(data, dtype="<u2").tobytes())
        else:
            item.add_new(0x00283006, "US", data)  # LUTData (VR US or OW)
        ds.VOILUTSequence = DicomSequence([item])
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def tiny_gray(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


# --------------------------------------------------------------------------------------------- datasets


def mimic_subject_dir(root: Path, subject: int, study: int) -> Path:
    return Path(root) / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"


def write_mimic_cxr(
    root: Path,
    studies: Sequence[dict],
    version: str = "2.0.0",
    labeler: str = "chexpert",
    reports_root: Path | None = None,
    write_images: bool = True,
) -> None:
    """studies: dicts with subject, study, split, images [(dicom_id, view, (w, h))], report (str or None),
    labels {name: value} (any subset of the 14). Writes the JPG tree, the gz CSVs and the report tree."""
    root = Path(root)
    meta_rows, split_rows, label_rows = [], [], []
    for s in studies:
        for dicom_id, view, (w, h) in s["images"]:
            meta_rows.append(
                (
                    dicom_id,
                    s["subject"],
                    s["study"],
                    "CHEST (PA AND LAT)",
                    view,
                    h,
                    w,
                    "21800506",
                    "213014.531",
                    "CHEST (PA AND LAT)",
                    "postero-anterior",
                    "Erect",
                )
            )
            split_rows.append((dicom_id, s["study"], s["subject"], s["split"]))
            if write_images:
                write_jpeg(
                    mimic_subject_dir(root, s["subject"], s["study"]) / f"{dicom_id}.jpg",
                    tiny_gray(w, h, seed=len(meta_rows)),
                )
        if s.get("labels") is not None:
            label_rows.append((s["subject"], s["study"], *(label_cell(s["labels"].get(n)) for n in MIMIC_LABEL_ORDER)))
        if s.get("report") is not None:
            report = mimic_subject_dir(reports_root or root, s["subject"], s["study"]).with_suffix(".txt")
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(s["report"])
    write_csv(root / f"mimic-cxr-{version}-metadata.csv.gz", MIMIC_METADATA_HEADER, meta_rows)
    write_csv(root / f"mimic-cxr-{version}-split.csv.gz", ("dicom_id", "study_id", "subject_id", "split"), split_rows)
    write_csv(
        root / f"mimic-cxr-{version}-{labeler}.csv.gz", ("subject_id", "study_id", *MIMIC_LABEL_ORDER), label_rows
    )


def mimic_report(findings: str | None, impression: str | None, width: int = 79) -> str:
    """A MIMIC-CXR style report: title, capitalised headers, leading-space lines wrapped at 79 chars."""

    def block(header: str, text: str) -> str:
        lines = textwrap.wrap(text, width=width - 1)
        return f" {header}: \n \n" + "\n".join(" " + ln for ln in lines) + "\n \n"

    out = "                                 FINAL REPORT\n"
    out += " EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with cough  // eval for pneumonia\n \n"
    out += " COMPARISON:  ___\n \n"
    if findings is not None:
        out += block("FINDINGS", findings)
    if impression is not None:
        out += block("IMPRESSION", impression)
    return out


def write_iu_report(folder: Path, number: int, sections: dict[str, str], image_ids: Sequence[str]) -> Path:
    """One ecgen-radiology XML in the Open-i layout."""
    abstract = "\n".join(
        f"            <AbstractText Label={quoteattr(k)}>{escape(v)}</AbstractText>" for k, v in sections.items()
    )
    images = "\n".join(
        f"   <parentImage id={quoteattr(i)}>\n      <figureId>F1</figureId>\n"
        f"      <caption>Xray Chest PA and Lateral</caption>\n   </parentImage>"
        for i in image_ids
    )
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{number}"/>
   <pmcId id="{number}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{number}"/>
   <licenseType>open-access</licenseType>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
{abstract}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      <major>normal</major>
   </MeSH>
{images}
</eCitation>"""
    path = Path(folder) / f"{number}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(xml, encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


# ------------------------------------------------------------------------------------------ real assets

ASSET_CACHE = Path(os.environ.get("DMX_JAX_TEST_ASSETS", Path.home() / ".cache" / "dmx_jax" / "test_assets"))
WHEELS = {
    "torchxrayvision": ("torchxrayvision==1.5.7", "torchxrayvision-1.5.7-py3-none-any.whl"),
    "pydicom-data": ("pydicom-data==1.0.0", "pydicom_data-1.0.0-py3-none-any.whl"),
}
TXV_DATA = "torchxrayvision/data/"  # member prefix inside the torchxrayvision wheel
PYDICOM_DATA = "data_store/data/"  # member prefix inside the pydicom-data wheel


def fetch_wheel(name: str) -> tuple[Path | None, str]:
    """(wheel path, '') from the cache, downloading with `pip download --no-deps` (never installing) when
    absent; (None, reason) when pip cannot get it."""
    spec, file_name = WHEELS[name]
    wheel = ASSET_CACHE / file_name
    if wheel.is_file():
        return wheel, ""
    ASSET_CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        spec,
        "-d",
        str(ASSET_CACHE),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"pip download {spec} failed: {e}"
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"pip download {spec} failed (registry unreachable?): {tail[0]}"
    return wheel, ""


def wheel_member(wheel: Path, member: str) -> Path:
    """The member extracted once into the cache (atomic rename, safe for concurrent test runs)."""
    target = ASSET_CACHE / "extracted" / wheel.stem / member
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(wheel) as zf, open(tmp, "wb") as out:
            out.write(zf.read(member))
        os.replace(tmp, target)
    return target


def head_lines(path: Path, n: int) -> list[str]:
    """The first n lines (header included) of a plain or gz text file, verbatim."""
    opener = gzip.open if str(path).endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        for line in f:
            out.append(line)
            if len(out) >= n:
                break
    return out
