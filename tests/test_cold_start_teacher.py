"""Cold-start teacher synthesis against a local stub OpenAI-compatible server: validation, rejection counts,
retries with backoff, the reply cache, key hygiene, the frame round trip through formatting, and the CLI."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from data_pipelines.adapters import load_generic
from data_pipelines.boxes import qwen_input_size, xyxy_to_qwen
from data_pipelines.cold_start import (
    REJECTIONS,
    TeacherConfig,
    answers_agree,
    load_template,
    parse_reply,
    read_jsonl_columns,
    synthesize,
    to_stored_frame,
)
from data_pipelines.cold_start.__main__ import main as cli_main
from data_pipelines.cold_start.client import retry_after_seconds
from data_pipelines.cold_start.prompt import messages, teacher_fields
from data_pipelines.cold_start.trace import boxes_in_bounds
from data_pipelines.formatting import rescale_box_text
from data_pipelines.schema import Box, Example
from data_pipelines.synthetic import SyntheticConfig, all_task_examples

SECRET = "sk-test-SECRET-cold-start-0123456789"
KEY_ENV = "DMX_TEACHER_API_KEY"
TIMEOUT = 0.3
RETRIES = 2
SIZE = (1000, 1250)  # stored (w, h); the model sees qwen_input_size(SIZE)
LONG_TRUTH = "There is a small left pleural effusion. No pneumothorax. Heart size is normal."
PARAPHRASE = "Small left-sided pleural effusion without pneumothorax; the heart size is normal."
LONG_WRONG = "Large right pneumothorax. No pleural effusion."


def good_reply(text: str, answer: str, fence=False, tight=False) -> str:
    w, h = (int(v) for v in re.search(r"Image size: (\d+) x (\d+)", text).groups())
    boxes = re.findall(r"^- (.+?): (\[[^\]]+\])$", text, re.M) or [("lungs", f"[0, 0, {w}, {h}]")]
    steps = [f"{k}. the {label} is seen at {box}" for k, (label, box) in enumerate(boxes, 1)]
    steps.append(f"{len(steps) + 1}. the opposite lung [0, 0, {w // 2}, {h}] is clear")
    body = "; ".join(steps)
    if tight:
        body = body.replace(", ", ",")
    out = f"<think>{body}</think>\nThe answer is: \\boxed{{{answer}}}."
    return f"```\n{out}\n```" if fence else out


class Stub:
    """Behaviour by the mode word that starts each question (see `answer`)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.auth: set[str] = set()
        self.image_sizes: set[tuple[int, int]] = set()
        self.total = 0

    def answer(self, handler, mode: str, n: int, text: str):
        truth = re.search(r"^Verified answer: (.*)$", text, re.M).group(1)
        w = int(re.search(r"Image size: (\d+) x", text).group(1))
        if mode == "slow":
            time.sleep(TIMEOUT + 0.2)
        if mode in ("429once", "500once") and n == 1 or mode in ("429always", "500always"):
            return (429, {"Retry-After": "0.2"}, b"slow down") if mode.startswith("429") else (503, {}, b"busy")
        if mode == "missing":
            return 404, {}, b"no such model"
        if mode == "echo":  # a server that echoes the request headers in its error body
            return 400, {}, f"bad request, Authorization: {handler.headers.get('Authorization')}".encode()
        if mode == "garbage":
            return 200, {}, b"<html>not json at all"
        content = {
            "ok": good_reply(text, truth),
            "fenced": good_reply(text, truth, fence=True, tight=True),
            "nothink": f"The answer is \\boxed{{{truth}}}",
            "wrong": good_reply(text, "no"),
            "permuted": good_reply(text, " | ".join(reversed(truth.upper().split("|")))),
            "paraphrase": good_reply(text, PARAPHRASE),
            "longwrong": good_reply(text, LONG_WRONG),
            "oob": good_reply(text, truth).replace("<think>", f"<think>0. margin [0, 0, {w + 9}, 10]; "),
        }
        content["429once"] = content["500once"] = content["ground"] = content["ok"]
        body = {"choices": [{"message": {"role": "assistant", "content": content[mode]}}]}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                parts = user if isinstance(user, list) else [{"type": "text", "text": user}]
                text = next(p["text"] for p in parts if p["type"] == "text")
                mode = re.search(r"^Question: (\w+)", text, re.M).group(1)
                sizes = [
                    Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).size
                    for p in parts
                    if p["type"] == "image_url"
                ]
                with stub.lock:
                    stub.total += 1
                    n = stub.calls[mode] = stub.calls.get(mode, 0) + 1
                    stub.auth.add(self.headers.get("Authorization", ""))
                    stub.image_sizes.update(sizes)
                code, headers, payload = stub.answer(self, mode, n, text)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the client hung up on a deliberately slow answer
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, SECRET)
    stub = Stub()
    httpd = QuietServer(("127.0.0.1", 0), stub.handler())
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield stub, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "cxr.png"
    Image.fromarray(np.linspace(0, 255, SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0]).astype(np.uint8)).save(path)
    return str(path)


def make_example(mode, image, task="vqa", target="yes", boxes=((130, 410, 377, 702, "nodule"),)):
    return Example(
        example_id=f"ex-{mode}",
        dataset="stub",
        task=task,
        images=(image,),
        image_sizes=(SIZE,),
        prompt=f"{mode} is there an abnormality?",
        target=target,
        boxes=tuple(Box(*b) for b in boxes),
    )


EXPECTED = {  # mode -> (outcome, requests sent for it)
    "ok": ("accepted", 1),
    "fenced": ("accepted", 1),
    "permuted": ("accepted", 1),
    "paraphrase": ("accepted", 1),
    "429once": ("accepted", 2),
    "500once": ("accepted", 2),
    "ground": ("accepted", 1),
    "wrong": ("wrong_answer", 1),
    "longwrong": ("wrong_answer", 1),
    "nothink": ("bad_format", 1),
    "garbage": ("unparseable", 1),
    "oob": ("box_out_of_bounds", 1),
    "slow": ("timeout", RETRIES + 1),
    "429always": ("rate_limited", RETRIES + 1),
    "500always": ("http_error", RETRIES + 1),
    "missing": ("http_error", 1),
    "echo": ("http_error", 1),
}


def all_examples(image):
    out = [make_example(m, image) for m in EXPECTED if m not in ("permuted", "paraphrase", "longwrong", "ground")]
    out.append(make_example("permuted", image, task="classification", target="Pleural Effusion|Atelectasis"))
    out.append(make_example("paraphrase", image, task="findings", target=LONG_TRUTH))
    out.append(make_example("longwrong", image, task="findings", target=LONG_TRUTH))
    out.append(make_example("ground", image, task="grounding", target="[130, 410, 377, 702]"))
    return out


def config(url, **kw):
    return TeacherConfig(
        base_url=url,
        model="stub-teacher",
        timeout_s=TIMEOUT,
        max_retries=RETRIES,
        backoff_base_s=0.01,
        backoff_cap_s=1.0,
        concurrency=4,
        **kw,
    )


def test_synthesize_counts_retries_cache_and_key_hygiene(server, image_path, tmp_path, caplog):
    stub, url = server
    caplog.set_level(logging.DEBUG)
    examples = all_examples(image_path)
    sleeps = []
    cfg = config(url, send_images=True)
    first = synthesize(examples, cfg, cache_dir=tmp_path / "cache", sleep=sleeps.append)
    outcomes = {r["example_id"][3:]: r["outcome"] for r in first.records}
    assert outcomes == {m: e[0] for m, e in EXPECTED.items()}, first.records
    assert stub.calls == {m: e[1] for m, e in EXPECTED.items()}
    want = {r: sum(1 for o, _ in EXPECTED.values() if o == r) for r in REJECTIONS}
    assert first.summary["rejected"] == want
    assert first.summary["accepted"] == 7
    assert first.summary["requests"] == stub.total == sum(e[1] for e in EXPECTED.values())
    assert stub.auth == {f"Bearer {SECRET}"}
    assert stub.image_sizes == {qwen_input_size(SIZE)}  # images sent in the frame the boxes are given in
    # backoff: exponential 0.01 * 2**k, at least Retry-After (0.2) on 429s
    assert sorted(sleeps) == pytest.approx(sorted([0.2, 0.2, 0.2] + [0.01, 0.01, 0.02] + [0.01, 0.02]))

    resized = qwen_input_size(SIZE)
    for ex in first.accepted:
        src = next(e for e in examples if e.example_id == ex.example_id)
        assert ex.task == src.task and ex.meta["teacher"] == "stub-teacher" and ex.meta["answer"] == src.target
        assert ex.target == ex.meta["reasoning"]
        assert re.fullmatch(r"<think>1\. .+</think>\nThe answer is: \\boxed\{.+\}", ex.target, re.S)
        assert ex.target.endswith(f"\\boxed{{{src.target}}}")  # the ground truth, verbatim
        # the stored-frame trace renders (formatting's rescale) to exactly what the teacher wrote
        assert rescale_box_text(ex.target, SIZE, resized) == ex.meta["reasoning_resized"]
        cited = [
            list(map(int, b))
            for b in re.findall(r"\[(\d+), (\d+), (\d+), (\d+)\]", ex.meta["reasoning_resized"].split("</think>")[0])
        ]
        assert cited[0] == xyxy_to_qwen([130, 410, 377, 702], SIZE).tolist()  # the finding box the teacher got
    ground = next(e for e in first.accepted if e.example_id == "ex-ground")
    assert ground.meta["teacher_answer"] == "[" + ", ".join(map(str, xyxy_to_qwen([130, 410, 377, 702], SIZE))) + "]"

    served = stub.total
    second = synthesize(examples, cfg, cache_dir=tmp_path / "cache", sleep=sleeps.append)
    assert stub.total == served and second.summary["requests"] == 0  # the rerun issued zero requests
    assert second.summary["cache_hits"] == len(examples)
    assert second.summary["rejected"] == first.summary["rejected"] and second.accepted == first.accepted

    third = synthesize(examples, cfg, cache_dir=tmp_path / "cache", retry_failed=True, sleep=sleeps.append)
    transport = [m for m, (o, _) in EXPECTED.items() if o in ("timeout", "rate_limited", "http_error")]
    assert third.summary["requests"] == sum(EXPECTED[m][1] for m in transport) == stub.total - served
    assert third.summary["cache_hits"] == len(examples) - len(transport)

    echo = next(r for r in first.records if r["example_id"] == "ex-echo")
    assert "[REDACTED]" in echo["detail"]
    texts = [caplog.text, repr(cfg), repr(first), json.dumps(first.summary), repr(second), repr(third)]
    texts += [p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(list((tmp_path / "cache").rglob("*.jsonl"))) == len(examples)
    assert "retry" in caplog.text
    assert not [t for t in texts if SECRET in t]


def test_key_never_in_errors(server, tmp_path, monkeypatch):
    _, url = server
    with pytest.raises(ValueError) as err:
        TeacherConfig(base_url=url, model="m", api_key_env=SECRET)
    assert "api_key_env" in str(err.value) and SECRET not in str(err.value)
    broken = make_example("ok", str(tmp_path / "missing.png"))
    with pytest.raises(ValueError) as err:
        synthesize([broken], config(url, send_images=True), cache_dir=tmp_path / "c")
    assert "ex-ok" in str(err.value) and "missing.png" in str(err.value) and SECRET not in str(err.value)


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>1. a [1, 2, 3, 4]</think>\nThe answer is: \\boxed{yes}", True),
        ("<think>1. a [1,2,3,4]</think> \\boxed{yes}.", True),
        ("```text\n<think>1. a [1, 2, 3, 4]</think>\nThe answer is: \\boxed{yes}\n```", True),
        ("<think>1. a</think>\nThe answer is: \\boxed{yes}", False),  # no box cited
        ("The answer is: \\boxed{yes}", False),  # no think block
        ("<think></think>\nThe answer is: \\boxed{yes}", False),  # empty block
        ("<think>1. a [1, 2, 3, 4]</think>\nThe answer is: yes", False),  # no \boxed
        ("<think>1. a [1, 2, 3, 4]</think>\nThe answer is: \\boxed{yes", False),  # unbalanced
        ("<think>1. a [1, 2, 3, 4]</think>\nI think \\boxed{yes} but maybe no", False),  # chatter
        ("Sure! <think>1. a [1, 2, 3, 4]</think>\nThe answer is: \\boxed{yes}", False),  # preamble
        ("<think>1. a [1, 2, 3, 4] \\boxed{no}</think>\nThe answer is: \\boxed{yes}", False),
        ("<think>1. a [1, 2, 3, 4]</think><think>2.</think>\\boxed{yes}", False),
    ],
)
def test_parse_reply_format(text, ok):
    trace, why = parse_reply(text)
    assert (trace is not None) == ok, why
    if ok:
        assert trace.answer == "yes" and trace.boxes == ((1, 2, 3, 4),) and "[1, 2, 3, 4]" in trace.body


@pytest.mark.parametrize(
    "answer, truth, task, agree",
    [
        ("Yes.", "yes", "vqa", True),
        ("no", "yes", "vqa", False),
        ("left  lower LOBE", "left lower lobe", "vqa", True),
        ("b | A", "a|b", "classification", True),
        ("a|b|c", "a|b", "classification", False),
        ("a", "a|b", "classification", False),
        ("[1,2,3,4]", "[1, 2, 3, 4]", "grounding", True),
        ("[1, 2, 3, 5]", "[1, 2, 3, 4]", "grounding", False),
        (PARAPHRASE, LONG_TRUTH, "findings", True),
        (LONG_WRONG, LONG_TRUTH, "findings", False),
        ("", LONG_TRUTH, "findings", False),
        ("Possible small left pleural effusion, no pneumothorax, normal heart size.", LONG_TRUTH, "impression", False),
        ("the left side has a small effusion", "small effusion on the left side", "vqa", False),  # short: exact only
        (
            "the effusion on the left side is small",
            "there is a small effusion on the left side",
            "vqa",
            True,
        ),  # 9 words
        ("the pneumothorax on the left side is small", "there is a small effusion on the left side", "vqa", False),
    ],
)
def test_answers_agree(answer, truth, task, agree):
    assert answers_agree(answer, truth, task, long_answer_min_words=8) is agree


def test_stored_frame_round_trips_through_formatting():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = (int(rng.integers(64, 3000)), int(rng.integers(64, 3000)))
        resized = qwen_input_size(size)
        w, h = resized
        boxes = [
            (int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(0, w + 1)), int(rng.integers(0, h + 1)))
            for _ in range(3)
        ]
        text = "1. a " + "; ".join("[" + ", ".join(map(str, b)) + "]" for b in boxes)
        stored = to_stored_frame(text, size, resized)
        assert rescale_box_text(stored, size, resized) == text, (size, text, stored)
        values = np.array(re.findall(r"-?\d+(?:\.\d+)?", stored.split("a ", 1)[1]), float).reshape(-1, 4)
        ref = np.asarray(boxes, float) * np.array([size[0] / w, size[1] / h] * 2)
        assert np.all(np.abs(values - ref) <= 0.5 * np.array([size[0] / w, size[1] / h] * 2) + 1e-9)


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("0.25") == 0.25
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_cli_writes_generic_jsonl(server, image_path, tmp_path, capsys):
    stub, url = server
    dump = tmp_path / "dump.jsonl"
    rows = [
        {
            "id": f"r-{m}",
            "images": [image_path],
            "question": f"{m} is there an effusion?",
            "answer": a,
            "task": t,
            "split": "train",
        }
        for m, a, t in [
            ("ok", "yes", "vqa"),
            ("wrong", "yes", "vqa"),
            ("permuted", ["Edema", "Atelectasis"], "classification"),
        ]
    ]
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "cold.jsonl"
    assert (
        cli_main(
            [
                "--adapter",
                "generic",
                "--root",
                str(dump),
                "--out",
                str(out),
                "--base-url",
                url,
                "--model",
                "stub-teacher",
                "--timeout",
                str(TIMEOUT),
                "--concurrency",
                "2",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["accepted"] == summary["written"] == 2 and summary["rejected"]["wrong_answer"] == 1
    back = list(load_generic(out, columns=read_jsonl_columns(), split="train"))
    assert [e.example_id for e in back] == ["r-ok", "r-permuted"]
    assert back[0].target.endswith("\\boxed{yes}") and back[1].target.endswith("\\boxed{Edema|Atelectasis}")
    assert all(e.image_sizes == (SIZE,) and e.task in ("vqa", "classification") for e in back)
    assert SECRET not in out.read_text()


def test_validator_accepts_the_synthetic_ground_truth_traces():
    """data_pipelines.synthetic writes traces from ground truth; seen in the resized frame, every one passes."""
    checked = 0
    for index in range(2):
        for ex in all_task_examples("train", index, SyntheticConfig()):
            size = ex.image_sizes[ex.box_image_index]
            resized = qwen_input_size(size)
            trace, why = parse_reply(rescale_box_text(ex.meta["reasoning"], size, resized))
            assert trace is not None, (ex.task, why)
            assert boxes_in_bounds(trace.boxes, resized), (ex.task, trace.boxes, resized)
            assert answers_agree(trace.answer, rescale_box_text(ex.target, size, resized), ex.task, 8), ex.task
            checked += 1
    assert checked >= 10


def test_template_file_fields_are_checked(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("sys\n---USER---\n${question} ${colour}")
    with pytest.raises(ValueError, match=r"bad\.txt.*colour"):
        load_template(bad)
    good = tmp_path / "good.txt"
    good.write_text("---USER---\nQ=${question} A=${answer} S=${width}x${height}\n${boxes}")
    ex = make_example("ok", "unused.png", task="grounding", target="[100, 125, 500, 625]")
    msgs = messages(ex, load_template(good), teacher_fields(ex, SIZE, (400, 500)), send_images=False)
    assert msgs == [
        {
            "role": "user",
            "content": "Q=ok is there an abnormality? A=[40, 50, 200, 250] S=400x500\n- nodule: [52, 164, 151, 281]",
        }
    ]
