"""Remote run / checkpoint directories: one clear line when the etils.epath backend is missing (naming the
pyproject extra that installs it), gs:// checkpoint paths handed to orbax unchanged, and a save / restore
through an etils.epath Path."""

import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

from dmx_jax.training import checkpoint as ckpt
from dmx_jax.training.checkpoint import Checkpointer, abstract_like, remote_path_error
from dmx_jax.training.state import init_train_state
from experiments.run import main
from experiments.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_gcs_backend(monkeypatch):
    monkeypatch.setitem(ckpt.REMOTE_BACKENDS, "gs", ((("dmx_no_such_a", "dmx_no_such_b"), ("json",)), "gcs"))


@pytest.fixture
def gcs_backend(monkeypatch):
    monkeypatch.setitem(ckpt.REMOTE_BACKENDS, "gs", ((("json",), ("os",)), "gcs"))  # importable stand-ins


def test_the_named_extra_exists_and_installs_the_backend():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    groups, extra = ckpt.REMOTE_BACKENDS["gs"]
    dists = {req.split("[")[0].split("=")[0].strip() for req in extras[extra]}
    assert dists == {"gcsfs", "google-cloud-storage"}
    assert "gcsfs" in groups[0] and "google.cloud.storage" in groups[1]


def test_cli_refuses_a_gs_run_dir_without_the_backend_in_one_line(no_gcs_backend, capsys):
    assert main(["--run-dir", "gs://bucket/x", "--distributed", "off"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "Traceback" not in err
    assert err.startswith("error: --run-dir gs://bucket/x: gs:// paths need dmx_no_such_a or dmx_no_such_b (")
    assert "pip install 'dmx-jax[gcs]'" in err and "mounted bucket" in err


def test_unsupported_scheme_and_local_paths():
    assert "unsupported scheme s3://" in remote_path_error("s3://b/x")
    assert remote_path_error("runs/x") is None and remote_path_error(Path("/tmp/x")) is None


def test_checkpointer_refuses_without_the_backend(no_gcs_backend):
    with pytest.raises(ValueError, match=r"pip install 'dmx-jax\[gcs\]'"):
        Checkpointer("gs://bucket/run/ckpt")


def test_real_backends_are_what_this_machine_has():
    err = remote_path_error("gs://bucket/x")
    have_epath = ckpt._importable("gcsfs") or ckpt._importable("tensorflow")
    have_client = ckpt._importable("google.cloud.storage")
    assert (err is None) == (have_epath and have_client)
    if err:
        assert err.endswith("pip install 'dmx-jax[gcs]'") and ("gcsfs or tensorflow" in err) != have_epath


def test_gs_checkpoint_path_reaches_orbax_unchanged(gcs_backend, tmp_path, monkeypatch):
    """epath's gs backend redirected to a local folder (etils' own mock) and orbax's bucket query answered
    (google-cloud-storage stand-in): the URI is kept as given, orbax's manager holds the same URI and
    creates and lists the folder through epath."""
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)

    def local(p):
        return str(p).replace("gs://", f"{tmp_path}/", 1)

    def one(fn, path, *a, **k):
        return fn(local(path), *a, **k)

    with epath_testing.mock_epath(
        exists=one, isdir=one, listdir=one, glob=one, makedirs=one, mkdir=one, stat=one, walk=one
    ):
        ck = Checkpointer("gs://bucket/run/ckpt", save_every=1, async_save=False)
        assert str(ck.directory) == "gs://bucket/run/ckpt" and str(ck._mngr.directory) == "gs://bucket/run/ckpt"
        assert ck.all_steps() == []
        ck.close()
    assert (tmp_path / "bucket" / "run" / "ckpt").is_dir()


def test_save_and_restore_through_an_epath_path(tmp_path):
    params = {"w": jnp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))}
    state = init_train_state(params, optax.adamw(1e-3), seed=1)
    ck = Checkpointer(epath.Path(tmp_path) / "ck", save_every=1, keep=2, async_save=False)
    assert isinstance(ck.directory, epath.Path)
    assert ck.save(3, state, data_state={"next": 9}, config={"a": 1})
    ck.wait()
    restored, data_state, step = ck.restore(abstract_like(state))
    assert step == 3 and data_state == {"next": 9} and ck.read_config() == {"a": 1}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp_path / "ck_data" / "3" / "process_0.json").is_file()
    ck.close()


def test_a_bucket_run_dir_syncs_through_epath(tmp_path, monkeypatch):
    """RunDir on gs:// (epath's gs backend answered by a local folder, etils' own mock): the URI is kept, the
    working copy defaults under ~/.cache, push copies what changed and skips the in-place checkpoint folders, and
    a new working copy pulls the small files back."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    bucket = tmp_path / "bucket"

    def local(p):
        return str(p).replace("gs://bucket", str(bucket), 1)

    def one(fn, path, *a, **k):
        return fn(local(path), *a, **k)

    with epath_testing.mock_epath(
        exists=one, isdir=one, listdir=one, glob=one, makedirs=one, mkdir=one, stat=one, walk=one, open=one
    ):
        rd = RunDir.open("gs://bucket/run")
        assert str(rd) == "gs://bucket/run" and str(rd.stage_store("sft")) == "gs://bucket/run/sft"
        assert rd.local == tmp_path / "home" / ".cache" / "dmx-jax" / "runs" / "bucket_run"
        assert rd.pull() == 0
        (rd.local / "eval").mkdir(parents=True)
        (rd.local / "eval" / "sft.json").write_text("{}")
        (rd.local / "sft").mkdir()
        (rd.local / "sft" / "DONE.json").write_text('{"steps": 3}')
        (rd.local / "sft" / "ckpt").mkdir()
        (rd.local / "sft" / "ckpt" / "x").write_text("orbax writes these in place")
        assert rd.push() == 2 and rd.push() == 0  # nothing changed since
        (rd.local / "eval" / "sft.json").write_text('{"a": 1}')
        assert rd.push() == 1
        assert (bucket / "run" / "eval" / "sft.json").read_text() == '{"a": 1}'
        assert not (bucket / "run" / "sft" / "ckpt").exists()
        (bucket / "run" / "sft" / "final_params").mkdir()  # a stage's parameters stay in the bucket
        (bucket / "run" / "sft" / "final_params" / "p").write_text("big")
        fresh = RunDir.open("gs://bucket/run", local=tmp_path / "other")
        assert fresh.pull() == 2 and fresh.push() == 0
        assert (tmp_path / "other" / "sft" / "DONE.json").read_text() == '{"steps": 3}'
        assert not (tmp_path / "other" / "sft" / "final_params").exists()


def test_a_local_run_dir_is_its_own_working_copy(tmp_path):
    rd = RunDir.open(tmp_path / "run")
    assert rd.store is None and rd.local == tmp_path / "run" and rd.push() == 0
    assert rd.stage_store("sft") == (tmp_path / "run" / "sft").absolute()
