"""On-disk cache of judges' raw verdicts, so that a rerun of the arena issues no judge request.

One JSON file per verdict under root/<key[:2]>/<key>.json, written atomically. The key hashes
(judge id, study id, system pair, presentation order, prompt hash); the prompt hash covers the rendered
prompt and the judge's sampling settings, so a changed report, template or setting misses the cache.
Records hold the judge id, the raw response text and the parsed verdict; never credentials or headers.
Failed calls (network errors, exhausted retries) are not cached; unparseable answers are.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_key(judge_id: str, study_id: str, system_a: str, system_b: str, order: str, prompt_hash: str) -> str:
    payload = json.dumps([judge_id, study_id, system_a, system_b, order, prompt_hash], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class VerdictCache:
    """get(key) -> record dict or None; put(key, record)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # a torn or foreign file: treat as a miss, it will be rewritten

    def put(self, key: str, record: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, ensure_ascii=False, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
