"""The run's persistent compilation cache: a second block loads what the first compiled, counted; and a copy of
the cache in another directory (a bucket run's working copy pulled on a new machine) hits as well."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp

from dmx_jax.training.compile_cache import persistent_compile_cache


def _program():
    return jax.jit(lambda x: jnp.sin(x) @ x.T)  # a new function object: no in-memory jit cache hit


def test_a_copied_cache_is_found_in_its_new_directory(tmp_path):
    x = jnp.ones((32, 32))
    with persistent_compile_cache(tmp_path / "a") as first:
        _program()(x).block_until_ready()
    assert first.compiled >= 1 and first.loaded == 0
    with persistent_compile_cache(tmp_path / "a") as again:
        _program()(x).block_until_ready()
    assert (again.loaded, again.compiled) == (1, 0)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with persistent_compile_cache(tmp_path / "b") as moved:
        _program()(x).block_until_ready()
    assert (moved.loaded, moved.compiled) == (1, 0)
    assert jax.config.jax_compilation_cache_dir != str(tmp_path / "b")  # the block puts the setting back
