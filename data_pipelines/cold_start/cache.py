"""On-disk cache of teacher replies, so that a rerun of the synthesiser issues no request.

One JSONL file per cache key, root/<key[:2]>/<key>.jsonl, written atomically; its single line records the
key, example id, model, the reply content (or None) and, for a failed call, the failure reason and detail.
The key hashes the model, the template text, the example id, prompt and target, the rendered user text
(finding boxes, image size), the sampling settings and whether images were sent; never the endpoint's
credentials. Validation is not cached: it is recomputed from the stored reply on every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def cache_key(*, model: str, template_text: str, example_id: str, prompt: str, target: str, user_text: str,
              temperature: float, max_tokens: int, images: list[str] | None) -> str:
    payload = [model, template_text, example_id, prompt, target, user_text, temperature, max_tokens, images]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


class ReplyCache:
    """get(key) -> record dict or None; put(key, record)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.jsonl"

    def get(self, key: str) -> dict | None:
        try:
            lines = self.path(key).read_text(encoding="utf-8").splitlines()
            record = json.loads(lines[-1]) if lines else None
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # missing, torn or foreign: a miss, rewritten after the next request
        return record if isinstance(record, dict) and record.get("key") == key else None

    def put(self, key: str, record: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({**record, "key": key}, ensure_ascii=False, sort_keys=True) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)
