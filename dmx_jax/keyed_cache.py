"""A directory of JSON records addressed by sha256 keys: root/<key[:2]>/<key><suffix>, each written atomically.

Serves the cold-start teacher's reply cache and Report Arena's verdict cache. A record stores its own key;
a missing, torn or foreign file (another key, not a JSON object) reads as a miss and is rewritten later.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def sha256_key(*parts) -> str:
    """Hex sha256 of the JSON list of `parts` (stable across runs and machines)."""
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode("utf-8")).hexdigest()


class KeyedJsonCache:
    """get(key) -> record dict or None; put(key, record)."""

    suffix = ".json"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{self.suffix}"

    def get(self, key: str) -> dict | None:
        try:
            record = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("key", key) == key else None

    def put(self, key: str, record: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({**record, "key": key}, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
