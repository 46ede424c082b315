"""On-disk cache of teacher replies, so that a rerun of the synthesiser issues no request.

One JSONL file per cache key, root/<key[:2]>/<key>.jsonl, written atomically; its single line records the
key, example id, model, the reply content (or None) and, for a failed call, the failure reason and detail.
The key hashes the model, the template text, the example id, prompt and target, the rendered user text
(finding boxes, image size), the sampling settings and whether images were sent; never the endpoint's
credentials. Validation is not cached: it is recomputed from the stored reply on every run.
"""

from __future__ import annotations

from dmx_jax.keyed_cache import KeyedJsonCache, sha256_key


def cache_key(
    *,
    model: str,
    template_text: str,
    example_id: str,
    prompt: str,
    target: str,
    user_text: str,
    temperature: float,
    max_tokens: int,
    images: list[str] | None,
) -> str:
    return sha256_key(model, template_text, example_id, prompt, target, user_text, temperature, max_tokens, images)


class ReplyCache(KeyedJsonCache):
    """get(key) -> record dict or None; put(key, record). One line of JSON per file."""

    suffix = ".jsonl"
