"""MIMIC-CXR-JPG (+ MIMIC-CXR reports): findings / impression generation and CheXpert classification.

Layout under `root` (PhysioNet mimic-cxr-jpg 2.x):
  mimic-cxr-2.x.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
  mimic-cxr-2.x.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train / validate / test)
  mimic-cxr-2.x.0-chexpert.csv[.gz]   subject_id, study_id + 14 labels in alphabetical order (or -negbio)
  files/p10/p10000032/s50414267/<dicom_id>.jpg
Reports (MIMIC-CXR project, `reports_root`, default `root`): files/p10/p10000032/s50414267.txt.
One example per study and task; images are the study's images, PA first, then AP, then the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from data_pipelines.adapters import _common as c
from data_pipelines.adapters.report_sections import parse_report_sections
from data_pipelines.schema import CHEXPERT_LABELS, Example

DATASET = "mimic-cxr"
SUPPORTED_TASKS = ("findings", "impression", "classification")
_VIEW_RANK = {"PA": 0, "AP": 1}
_META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns")


def find_mimic_table(root: c.PathLike, kind: str) -> Path:
    """The newest `mimic-cxr-<version>-<kind>.csv[.gz]` under root (kind: metadata, split, chexpert, negbio)."""
    root = Path(root)
    pattern = re.compile(rf"mimic-cxr-(\d+)\.(\d+)\.(\d+)-{re.escape(kind)}\.csv(\.gz)?$")
    found = []
    for p in root.glob(f"mimic-cxr-*-{kind}.csv*"):
        m = pattern.match(p.name)
        if m and p.is_file():
            found.append((tuple(int(g) for g in m.groups()[:3]), p))
    if not found:
        raise FileNotFoundError(f"{root}: no mimic-cxr-<version>-{kind}.csv[.gz] found")
    return max(found)[1]


def study_dir(files_root: Path, subject_id: str, study_id: str) -> Path:
    """files/pXX/pSUBJECT/sSTUDY for MIMIC-CXR ids (XX = first two digits of the subject id)."""
    subject = str(int(subject_id))
    return files_root / f"p{subject[:2]}" / f"p{subject}" / f"s{int(study_id)}"


def read_metadata(root: c.PathLike) -> dict[str, list[dict[str, str]]]:
    """study_id -> metadata rows of its images, in file order."""
    path = find_mimic_table(root, "metadata")
    studies: dict[str, list[dict[str, str]]] = {}
    for row in c.read_csv(path, _META_COLUMNS):
        studies.setdefault(str(int(row["study_id"])), []).append(row)
    return studies


def order_views(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """PA, then AP, then other views; stable otherwise."""
    return sorted(rows, key=lambda r: _VIEW_RANK.get(r.get("ViewPosition", "").strip().upper(), 2))


def read_labels(root: c.PathLike, labeler: str) -> dict[tuple[str, str], object]:
    path = find_mimic_table(root, labeler)
    labels = {}
    for row in c.read_csv(path, ("subject_id", "study_id", *CHEXPERT_LABELS)):
        labels[(str(int(row["subject_id"])), str(int(row["study_id"])))] = c.chexpert_vector(
            row, f"{path}: subject_id {row['subject_id']} study_id {row['study_id']}"
        )
    return labels


@c.checked_eagerly
def load_mimic_cxr(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("findings", "impression"),
    reports_root: c.PathLike | None = None,
    labeler: str = "chexpert",
    views: Sequence[str] | None = None,
    max_images_per_study: int | None = None,
    missing_images: str = "error",
    skip_missing_reports: bool = False,
) -> Iterator[Example]:
    """Yields one Example per (study, task) of MIMIC-CXR-JPG.

        labeler: 'chexpert' or 'negbio' label table for the classification task. views: keep only these
        ViewPosition values (e.g. ('PA', 'AP')). A study without a FINDINGS (IMPRESSION) section yields no
        findings (impression) example; a study without a label row yields no classification example.
    A missing or empty (whitespace-only) report file raises FileNotFoundError naming it, unless
    skip_missing_reports=True, which skips the study's report tasks with one logged warning per study.
    """
    tasks, want_split = c.check_arguments("load_mimic_cxr", tasks, SUPPORTED_TASKS, missing_images, split)
    root = Path(root)
    files_root = root / "files"
    reports_files = Path(reports_root if reports_root is not None else root) / "files"
    split_path = find_mimic_table(root, "split")
    metadata_path = find_mimic_table(root, "metadata")
    if "classification" in tasks:
        find_mimic_table(root, labeler)
    keep_views = None if views is None else {v.upper() for v in views}
    yield c.CHECKED

    split_of = {
        r["dicom_id"]: c.normalize_split(r["split"], str(split_path))
        for r in c.read_csv(split_path, ("dicom_id", "split"))
    }
    labels = read_labels(root, labeler) if "classification" in tasks else {}

    for study_id, rows in read_metadata(root).items():
        if keep_views is not None:
            rows = [r for r in rows if r["ViewPosition"].strip().upper() in keep_views]
        rows = order_views(rows)[:max_images_per_study]
        if not rows:
            continue
        subject_id = str(int(rows[0]["subject_id"]))
        study_split = split_of.get(rows[0]["dicom_id"])
        if study_split is None:
            raise ValueError(f"{split_path}: dicom_id {rows[0]['dicom_id']} (study {study_id}) has no split row")
        if want_split is not None and study_split != want_split:
            continue
        folder = study_dir(files_root, subject_id, study_id)
        try:
            images = [
                c.sized_image(
                    folder / f"{r['dicom_id']}.jpg",
                    missing_images,
                    c.as_int_size(r["Columns"], r["Rows"]),
                    str(metadata_path),
                )
                for r in rows
            ]
        except c.SkipExample:
            continue
        base = dict(
            dataset=DATASET,
            images=tuple(p for p, _ in images),
            image_sizes=tuple(s for _, s in images),
            split=study_split,
        )
        meta = {
            "subject_id": subject_id,
            "study_id": study_id,
            "dicom_ids": tuple(r["dicom_id"] for r in rows),
            "view_positions": tuple(r["ViewPosition"] for r in rows),
        }

        if "findings" in tasks or "impression" in tasks:
            report_path = study_dir(reports_files, subject_id, study_id).with_suffix(".txt")
            report_text = report_path.read_text(encoding="utf-8") if report_path.is_file() else ""
            if report_text.strip():
                sections = parse_report_sections(report_text)
                for task, text, prompt in (
                    ("findings", sections.findings, c.FINDINGS_PROMPT),
                    ("impression", sections.impression, c.IMPRESSION_PROMPT),
                ):
                    if task in tasks and text:
                        yield Example(
                            example_id=f"{DATASET}/s{study_id}/{task}",
                            task=task,
                            prompt=prompt,
                            target=text,
                            meta={**meta, "report_path": str(report_path)},
                            **base,
                        )
            elif not skip_missing_reports:
                problem = "is empty" if report_path.is_file() else "not found"
                raise FileNotFoundError(
                    f"report {problem}: {report_path} (study {study_id}); set reports_root "
                    "to the MIMIC-CXR report tree or skip_missing_reports=True"
                )
            else:
                c.log.warning(
                    "skipping the report tasks of study %s: report %s: %s (skip_missing_reports=True)",
                    study_id,
                    "is empty" if report_path.is_file() else "not found",
                    report_path,
                )
        if "classification" in tasks:
            vector = labels.get((subject_id, study_id))
            if vector is not None:
                yield Example(
                    example_id=f"{DATASET}/s{study_id}/classification",
                    task="classification",
                    prompt=c.CLASSIFICATION_PROMPT,
                    target=c.positive_findings(vector),
                    labels=vector,
                    meta=meta,
                    **base,
                )
