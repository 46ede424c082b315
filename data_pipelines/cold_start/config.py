"""Settings of the cold-start teacher: an OpenAI-compatible chat-completions endpoint.

The API key never lives here: `api_key_env` names the environment variable that holds it, and the client
reads that variable at request time, only to build the Authorization header.
"""

from __future__ import annotations

import dataclasses
import re

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """base_url: the API root, e.g. 'https://api.example.com/v1' ('/chat/completions' is appended).
    model: the teacher model name sent with every request and written to meta['teacher'].
    api_key_env: NAME of the environment variable holding the key (unset: no Authorization header).
    timeout_s: per-request socket timeout. max_retries: extra attempts after a timeout, a connection error,
      HTTP 429 or 5xx; the wait before retry k (0-based) is min(backoff_cap_s, max(backoff_base_s * 2**k,
      Retry-After)).
    concurrency: requests in flight at once (thread pool size).
    prompt_template: path of a template file ('system' text, a '---USER---' line, 'user' text, with
      ${task} ${images_note} ${width} ${height} ${question} ${answer} ${boxes}); None: the packaged
      data_pipelines/templates/cold_start_teacher.txt.
    send_images: attach the images, resized to the frame the box coordinates refer to, as base64 PNG data
      URLs (OpenAI vision message format).
    long_answer_min_words: a target with at least this many words (or a findings / impression target) is
      a long answer, checked by CheXpert label agreement instead of exact match (see trace.answers_agree).
    """

    base_url: str
    model: str
    api_key_env: str = "DMX_TEACHER_API_KEY"
    temperature: float = 0.6
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    concurrency: int = 4
    prompt_template: str | None = None
    send_images: bool = False
    long_answer_min_words: int = 8

    def __post_init__(self):
        def bad(field: str, why: str):
            raise ValueError(f"TeacherConfig.{field}: {why}")

        if not self.base_url.startswith(("http://", "https://")):
            bad("base_url", f"must start with http:// or https://, got {self.base_url!r}")
        if not self.model.strip():
            bad("model", "must be a non-empty model name")
        if not _ENV_NAME.match(self.api_key_env):
            # never echo the value: a caller may have passed the key itself by mistake
            bad("api_key_env", "must be the NAME of an environment variable (letters, digits, '_'), not a key")
        if self.timeout_s <= 0:
            bad("timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            bad("max_retries", f"must be >= 0, got {self.max_retries}")
        if self.backoff_base_s < 0 or self.backoff_cap_s < self.backoff_base_s:
            bad(
                "backoff_cap_s",
                f"need 0 <= backoff_base_s <= backoff_cap_s, got {self.backoff_base_s}, {self.backoff_cap_s}",
            )
        if self.concurrency < 1:
            bad("concurrency", f"must be >= 1, got {self.concurrency}")
        if self.max_tokens < 1:
            bad("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.long_answer_min_words < 1:
            bad("long_answer_min_words", f"must be >= 1, got {self.long_answer_min_words}")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"
