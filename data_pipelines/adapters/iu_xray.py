"""IU-Xray / Open-i (ecgen-radiology XML reports): findings and impression generation.

`root` is a folder holding ecgen-radiology/*.xml (or the XMLs themselves), or the NLMCXR_reports.tgz
archive, or a folder holding that archive. Each report's sections are
`<AbstractText Label="FINDINGS|IMPRESSION|...">`; its images are `<parentImage id="CXR1_1_IM-0001-3001">`,
read from `images_dir` (default root/NLMCXR_png) as <id>.png. Reports without images are skipped.
IU-Xray has no official split; every example is 'test' (DeepMedix evaluates on it).
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

from data_pipelines.adapters import _common as c
from data_pipelines.schema import Example

DATASET = "iu-xray"
SUPPORTED_TASKS = ("findings", "impression")
ARCHIVE = "NLMCXR_reports.tgz"


def _number(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)\.xml$", name)
    return (int(m.group(1)) if m else 1 << 60, name)


def iter_report_xml(root: c.PathLike) -> Iterator[tuple[str, bytes]]:
    """(file name, XML bytes) for every report, in numeric file order."""
    root = Path(root)
    archive = root if root.is_file() else root / ARCHIVE
    folder = root / "ecgen-radiology" if (root / "ecgen-radiology").is_dir() else root
    if root.is_dir() and any(folder.glob("*.xml")):
        for path in sorted(folder.glob("*.xml"), key=lambda p: _number(p.name)):
            yield str(path), path.read_bytes()
    elif archive.is_file():
        with tarfile.open(archive, "r:*") as tar:  # read in archive order: seeking back in a .tgz is slow
            files = [
                (m.name, tar.extractfile(m).read())
                for m in tar  # type: ignore[union-attr]
                if m.isfile() and m.name.endswith(".xml")
            ]
        for member_name, data in sorted(files, key=lambda f: _number(f[0])):
            yield f"{archive}:{member_name}", data
    else:
        raise FileNotFoundError(f"{root}: no ecgen-radiology/*.xml and no {ARCHIVE}")


def parse_report_xml(data: bytes, name: str = "<xml>") -> dict:
    """{'uid', 'sections': {LABEL: text}, 'image_ids': [...], 'mesh_major': [...]} of one ecgen report."""
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"{name}: invalid XML: {e}") from None
    sections = {}
    for node in tree.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        if label:
            sections[label] = c.clean_text("".join(node.itertext()))
    uid = tree.find("uId")
    return {
        "uid": uid.get("id", "") if uid is not None else "",
        "sections": sections,
        "image_ids": [n.get("id", "") for n in tree.iter("parentImage") if n.get("id")],
        "mesh_major": [c.clean_text(n.text) for n in tree.iter("major") if n.text],
    }


@c.checked_eagerly
def load_iu_xray(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("findings", "impression"),
    images_dir: c.PathLike | None = None,
    missing_images: str = "error",
) -> Iterator[Example]:
    """One Example per (report, task) with a non-empty section; images in parentImage order."""
    tasks = c.check_tasks(tasks, SUPPORTED_TASKS, "load_iu_xray")
    c.check_policy(missing_images)
    if c.normalize_split(split, "load_iu_xray") not in (None, "test"):
        raise ValueError(f"load_iu_xray: IU-Xray has no official {split!r} split; use split=None or 'test'")
    root = Path(root)
    default_root = (root.parent if root.is_file() else root) / "NLMCXR_png"
    image_root = Path(images_dir) if images_dir is not None else default_root
    if not (
        root.is_file() or (root / ARCHIVE).is_file() or any(root.glob("*.xml")) or (root / "ecgen-radiology").is_dir()
    ):
        raise FileNotFoundError(f"{root}: no ecgen-radiology/*.xml and no {ARCHIVE}")
    yield c.CHECKED
    for name, data in iter_report_xml(root):
        report = parse_report_xml(data, name)
        if not report["image_ids"]:
            continue
        try:
            images = [
                c.sized_image(
                    c.resolve_image(image_root / f"{i}.png", [image_root / f"{i}.jpg"]), missing_images, source=name
                )
                for i in report["image_ids"]
            ]
        except c.SkipExample:
            continue
        uid = report["uid"] or Path(name).stem
        for task, label, prompt in (
            ("findings", "FINDINGS", c.FINDINGS_PROMPT),
            ("impression", "IMPRESSION", c.IMPRESSION_PROMPT),
        ):
            text = report["sections"].get(label, "")
            if task in tasks and text:
                yield Example(
                    example_id=f"{DATASET}/{uid}/{task}",
                    dataset=DATASET,
                    task=task,
                    images=tuple(p for p, _ in images),
                    image_sizes=tuple(s for _, s in images),
                    prompt=prompt,
                    target=text,
                    split="test",
                    meta={
                        "uid": uid,
                        "image_ids": tuple(report["image_ids"]),
                        "source": name,
                        "indication": report["sections"].get("INDICATION", ""),
                        "comparison": report["sections"].get("COMPARISON", ""),
                        "mesh_major": tuple(report["mesh_major"]),
                    },
                )
