"""Stdlib HTTP client for an OpenAI-compatible /chat/completions endpoint, with retries and key hygiene.

Failures are values, never exceptions: a call returns a Completion whose `failure` is one of
  timeout       the last attempt timed out (socket timeout while connecting or reading);
  rate_limited  the last attempt got HTTP 429;
  http_error    any other HTTP error status, or a refused / reset connection;
  unparseable   HTTP 200 with a body that is not a chat completion (no choices[0].message.content string).
Timeouts, connection errors, 429 and 5xx are retried up to max_retries times; other 4xx are final.
The key is read from the environment per request and used only in the Authorization header; every text
this module returns or logs is passed through `redact` first (a server may echo request headers).
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from data_pipelines.cold_start.config import TeacherConfig

log = logging.getLogger(__name__)
FAILURES = ("timeout", "rate_limited", "http_error", "unparseable")
_BODY_SNIPPET = 500  # characters of an error / unparseable body kept for diagnosis


@dataclasses.dataclass(frozen=True)
class Completion:
    content: str | None  # the assistant text; None when the call failed
    failure: str | None = None  # one of FAILURES, or None
    detail: str = ""  # what went wrong (status, reason, body snippet), redacted
    requests: int = 0  # HTTP requests actually sent


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds (int or float) or an HTTP date; None when absent / unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(config: TeacherConfig, attempt: int, retry_after: float | None) -> float:
    """Wait before retry `attempt` (0-based): exponential, at least Retry-After, at most backoff_cap_s."""
    delay = config.backoff_base_s * (2**attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, config.backoff_cap_s)


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, (TimeoutError, socket.timeout)) or isinstance(
        getattr(error, "reason", None), (TimeoutError, socket.timeout)
    )


class TeacherClient:
    """complete(messages, label) -> Completion. Thread-safe (no shared mutable state besides logging)."""

    def __init__(self, config: TeacherConfig, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self._sleep = sleep

    def __repr__(self) -> str:
        c = self.config
        return f"TeacherClient(url={c.url!r}, model={c.model!r}, api_key_env={c.api_key_env!r})"

    def _key(self) -> str | None:
        return os.environ.get(self.config.api_key_env) or None

    def redact(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "[REDACTED]") if key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def payload(self, messages: list[dict]) -> dict:
        c = self.config
        return {"model": c.model, "messages": messages, "temperature": c.temperature, "max_tokens": c.max_tokens}

    def complete(self, messages: list[dict], label: str = "") -> Completion:
        c = self.config
        body = json.dumps(self.payload(messages)).encode("utf-8")
        failure, detail, sent = "http_error", "no attempt made", 0
        for attempt in range(c.max_retries + 1):
            retry_after = None
            sent += 1
            try:
                request = urllib.request.Request(c.url, data=body, headers=self._headers(), method="POST")
                with urllib.request.urlopen(request, timeout=c.timeout_s) as response:
                    raw = response.read()
                return self._parse(raw, sent)
            except urllib.error.HTTPError as e:
                failure = "rate_limited" if e.code == 429 else "http_error"
                detail = self.redact(f"HTTP {e.code}: {_snippet(e)}")
                retry_after = retry_after_seconds(e.headers.get("Retry-After") if e.headers else None)
                if e.code != 429 and e.code < 500:
                    log.warning("teacher %s %s: %s, not retried", c.model, label, detail)
                    return Completion(None, failure, detail, sent)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                failure = "timeout" if _is_timeout(e) else "http_error"
                detail = self.redact(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
            if attempt < c.max_retries:
                delay = backoff_delay(c, attempt, retry_after)
                log.warning(
                    "teacher %s %s: %s; retry %d/%d in %.2fs", c.model, label, detail, attempt + 1, c.max_retries, delay
                )
                self._sleep(delay)
        log.error("teacher %s %s: giving up after %d attempts (%s)", c.model, label, sent, detail)
        return Completion(None, failure, f"{detail} after {sent} attempts", sent)

    def _parse(self, raw: bytes, sent: int) -> Completion:
        text = raw.decode("utf-8", errors="replace")
        try:
            content = json.loads(text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Completion(None, "unparseable", self.redact(text[:_BODY_SNIPPET]), sent)
        if not isinstance(content, str):
            return Completion(None, "unparseable", self.redact(text[:_BODY_SNIPPET]), sent)
        return Completion(self.redact(content), None, "", sent)


def _snippet(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read().decode("utf-8", errors="replace")
    except Exception:
        body = ""
    return " ".join(body.split())[:_BODY_SNIPPET] or str(error.reason)
