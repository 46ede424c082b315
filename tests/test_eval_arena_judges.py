"""OpenAI-compatible judge against a local stub server: retries, garbage, key hygiene, cache reruns."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dmx_jax.eval.arena import JudgeRequest, OpenAICompatibleJudge, Report, RubricJudge, parse_verdict, run_arena

SECRET = "sk-test-SECRET-0123456789"
CLIENT_TIMEOUT = 0.3


class Stub:
    """Behaviour per reference text: 'ok' answers, 'slow-once' times out once, '429-twice' is rate-limited
    twice, '500-always' always fails, 'garbage-json' / 'garbage-text' answer unusable bodies."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.auth: set[str] = set()
        self.total = 0

    def handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][1]["content"]
                mode = user.split("Reference report:\n", 1)[1].split("\n", 1)[0]
                with stub.lock:
                    stub.total += 1
                    n = stub.calls[mode] = stub.calls.get(mode, 0) + 1
                    stub.auth.add(self.headers.get("Authorization", ""))
                if mode == "slow-once" and n == 1:
                    time.sleep(CLIENT_TIMEOUT + 0.3)
                if (mode == "429-twice" and n <= 2) or mode == "500-always":
                    code = 429 if mode == "429-twice" else 503
                    self.send_response(code)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                if mode == "garbage-text":
                    payload = b"<html>totally not json"
                else:
                    # prefers the report that contains "effusion" (so verdicts are order-consistent)
                    a = user.split("Report A:\n", 1)[1].split("\n", 1)[0]
                    b = user.split("Report B:\n", 1)[1].split("\n", 1)[0]
                    verdict = "TIE" if ("effusion" in a) == ("effusion" in b) else ("A" if "effusion" in a else "B")
                    content = "I cannot decide, sorry." if mode == "garbage-json" else f"Reasoning.\nVERDICT: {verdict}"
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
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
    for var in ("no_proxy", "NO_PROXY"):  # never route the loopback stub through a configured proxy
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    stub = Stub()
    httpd = QuietServer(("127.0.0.1", 0), stub.handler())
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield stub, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def make_judge(url, **kw):
    sleeps = []
    judge = OpenAICompatibleJudge(
        url,
        "stub-model",
        concurrency=3,
        timeout=CLIENT_TIMEOUT,
        max_retries=3,
        backoff_s=0.01,
        sleep=sleeps.append,
        **kw,
    )
    return judge, sleeps


def request(mode, a="small left effusion", b="no acute disease"):
    return JudgeRequest("s1", Report(mode), Report(a), Report(b))


def test_parse_verdict_is_strict():
    assert parse_verdict("blah\nVERDICT: A\n") == "A"
    assert parse_verdict("VERDICT:TIE") == "TIE"
    for bad in ["VERDICT: A\nmore text", "verdict: a", "VERDICT: C", "The verdict is A", "", "**VERDICT: B**"]:
        assert parse_verdict(bad) is None, bad


def test_answers_retries_and_garbage(server, monkeypatch, caplog):
    stub, url = server
    monkeypatch.setenv("DMX_JUDGE_API_KEY", SECRET)
    judge, sleeps = make_judge(url)
    caplog.set_level(logging.DEBUG)
    modes = ["ok", "slow-once", "429-twice", "garbage-json", "garbage-text", "500-always"]
    out = dict(zip(modes, judge.judge([request(m) for m in modes])))
    assert out["ok"].verdict == "A" and out["ok"].error is None
    assert out["slow-once"].verdict == "A" and stub.calls["slow-once"] == 2  # timed out once, retried
    assert out["429-twice"].verdict == "A" and stub.calls["429-twice"] == 3
    assert out["garbage-json"].verdict is None and out["garbage-json"].error is None  # unparseable, no crash
    assert out["garbage-text"].verdict is None and "not json" in out["garbage-text"].raw
    assert out["500-always"].verdict is None and "HTTP 503" in out["500-always"].error
    assert stub.calls["500-always"] == 4  # 1 + max_retries, then gives up
    # exponential backoff: 500-always waits 0.01, 0.02, 0.04; 429-twice 0.01, 0.02; slow-once 0.01
    assert sorted(sleeps) == pytest.approx([0.01, 0.01, 0.01, 0.02, 0.02, 0.04])
    assert stub.auth == {f"Bearer {SECRET}"}  # the key is sent ...
    assert "retry" in caplog.text and SECRET not in caplog.text  # ... but never logged


def test_arena_with_http_judge_counts_unparseable_caches_and_hides_key(server, monkeypatch, tmp_path, caplog):
    stub, url = server
    monkeypatch.setenv("DMX_JUDGE_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    refs = {"s1": Report("ok"), "s2": Report("ok"), "s3": Report("garbage-json"), "s4": Report("429-twice")}
    systems = {
        "good": {s: Report("small left effusion") for s in refs},
        "bad": {s: Report("no acute disease") for s in refs},
        "also_good": {s: Report("left effusion") for s in ("s1", "s2", "s4")},
    }
    judge, _ = make_judge(url)
    first = run_arena(refs, systems, [judge], cache=tmp_path / "cache", n_bootstrap=50)
    bias = first["judges"][0]["position_bias"]
    assert bias["unparseable"] == 2 and bias["left_out"] == 1 and bias["errors"] == 0  # s3: both orders garbage
    assert bias["requests"] == 2 * (3 + 3 + 1 + 3) and bias["cache_hits"] == 0
    assert bias["inconsistent"] == 0 and bias["pairs"] == 10
    ranking = first["combined"]["ranking"]
    assert ranking[-1] == "bad"
    served = stub.total
    second = run_arena(refs, systems, [judge], cache=tmp_path / "cache", n_bootstrap=50)
    assert stub.total == served  # the rerun issued zero requests
    assert second["judges"][0]["position_bias"]["cache_hits"] == 20
    assert second["combined"]["ratings"] == first["combined"]["ratings"]
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 20
    for f in files:
        text = f.read_text()
        assert SECRET not in text and "Authorization" not in text
    assert SECRET not in caplog.text and SECRET not in json.dumps(first)


def test_failed_calls_are_counted_and_not_cached(server, tmp_path):
    stub, url = server
    judge, _ = make_judge(url)
    refs = {"s1": Report("ok"), "s2": Report("500-always")}
    systems = {"good": {s: Report("small left effusion") for s in refs}, "bad": {s: Report("clear") for s in refs}}
    out = run_arena(refs, systems, [judge], cache=tmp_path, n_bootstrap=20)
    bias = out["judges"][0]["position_bias"]
    assert bias["errors"] == 2 and bias["unparseable"] == 0 and bias["left_out"] == 1
    assert stub.calls["500-always"] == 2 * 4 and len(list(tmp_path.rglob("*.json"))) == 2
    again = run_arena(refs, systems, [judge], cache=tmp_path, n_bootstrap=20)
    assert stub.calls["500-always"] == 4 * 4 and stub.calls["ok"] == 2  # only the failures are asked again
    assert again["judges"][0]["position_bias"]["cache_hits"] == 2


def test_prompt_template_is_a_packaged_file_and_hash_tracks_content(server):
    _, url = server
    judge, _ = make_judge(url)
    payload = judge.payload(request("ok"))
    assert "VERDICT: TIE" in payload["messages"][1]["content"] and "radiologist" in payload["messages"][0]["content"]
    assert judge.prompt_hash(request("ok")) != judge.prompt_hash(request("ok", a="large right effusion"))
    assert judge.prompt_hash(request("ok")) == make_judge(url)[0].prompt_hash(request("ok"))


def test_rubric_judge_is_offline_deterministic_and_labelled(tmp_path):
    ref = Report("Small left pleural effusion. Mild cardiomegaly.", ((10, 40, 30, 60),))
    good = Report("Small left pleural effusion and mild cardiomegaly.", ((11, 41, 30, 60),))
    wrong_side = Report("Small right pleural effusion and mild cardiomegaly.", ((60, 40, 80, 60),))
    negated = Report("No pleural effusion. Normal heart size.")
    rubric = RubricJudge()
    scores = {
        n: rubric.components(r, ref)["total"]
        for n, r in (("good", good), ("wrong_side", wrong_side), ("negated", negated))
    }
    assert scores["good"] > scores["wrong_side"] > scores["negated"]
    assert rubric.components(good, ref)["labels"] == 1.0 and rubric.components(wrong_side, ref)["sides"] == 0.0
    verdicts = [
        r.verdict
        for r in rubric.judge(
            [
                JudgeRequest("s", ref, good, negated),
                JudgeRequest("s", ref, negated, good),
                JudgeRequest("s", ref, good, good),
            ]
        )
    ]
    assert verdicts == ["A", "B", "TIE"]
    out = run_arena({"s": ref}, {"x": {"s": good}, "y": {"s": negated}}, [rubric], cache=tmp_path, n_bootstrap=20)
    assert out["judges"][0]["label"] == "offline rubric judge"
    assert out["combined"]["judges"] == ["offline rubric judge"] and out["combined"]["ranking"] == ["x", "y"]
