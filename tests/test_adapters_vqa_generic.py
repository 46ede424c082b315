"""Question adapters (MIMIC-CXR-VQA, Medical-Diff-VQA, VQA-RAD, SLAKE), the generic JSONL / parquet loader and
the adapter registry, on files written here in the exact real formats."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import real_formats as rf
from PIL import Image

from data_pipelines.adapters import (
    ADAPTERS,
    GenericColumns,
    MissingColumnError,
    load_dataset,
    load_generic,
    load_medical_diff_vqa,
    load_mimic_cxr_vqa,
    load_slake,
    load_vqa_rad,
)

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
    import pyarrow as pa  # noqa: PLC0415 optional
    import pyarrow.parquet as pq  # noqa: PLC0415 optional

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
