"""On-disk cache of judges' raw verdicts, so that a rerun of the arena issues no judge request.

One JSON file per verdict under root/<key[:2]>/<key>.json, written atomically. The key hashes
(judge id, study id, system pair, presentation order, prompt hash); the prompt hash covers the rendered
prompt and the judge's sampling settings, so a changed report, template or setting misses the cache.
Records hold the judge id, the raw response text and the parsed verdict; never credentials or headers.
Failed calls (network errors, exhausted retries) are not cached; unparseable answers are.
"""

from __future__ import annotations

from dmx_jax.keyed_cache import KeyedJsonCache, sha256_key


def cache_key(judge_id: str, study_id: str, system_a: str, system_b: str, order: str, prompt_hash: str) -> str:
    return sha256_key(judge_id, study_id, system_a, system_b, order, prompt_hash)


class VerdictCache(KeyedJsonCache):
    """get(key) -> record dict or None; put(key, record)."""
