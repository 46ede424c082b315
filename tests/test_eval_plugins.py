"""Model-based metric plug-ins: skip behaviour and the interface (no weights exist in this repository)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from dmx_jax.eval.plugins import PLUGINS, MetricPlugin, PluginUnavailable, plugin_scores

ENV_VARS = {"chexbert": "DMX_CHEXBERT_CACHE", "radgraph": "DMX_RADGRAPH_DIR", "bertscore": "DMX_BERTSCORE_MODEL",
            "green": "DMX_GREEN_MODEL", "ratescore": "DMX_RATESCORE_DIR"}


@pytest.fixture
def clean_env(monkeypatch):
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_all_five_plugins_are_registered():
    assert set(PLUGINS) == set(ENV_VARS)
    for name, cls in PLUGINS.items():
        assert cls.name == name and cls.env_var == ENV_VARS[name]


@pytest.mark.parametrize("name", sorted(ENV_VARS))
def test_skipped_without_weights_with_a_reason(name, clean_env):
    plugin = PLUGINS[name]()
    ok, why = plugin.available()
    assert not ok and ENV_VARS[name] in why
    with pytest.raises(PluginUnavailable, match=ENV_VARS[name]):
        plugin.score(["no effusion"], ["no effusion"])


@pytest.mark.parametrize("name", sorted(ENV_VARS))
def test_missing_path_and_missing_package_are_reported(name, clean_env, tmp_path):
    clean_env.setenv(ENV_VARS[name], str(tmp_path / "absent"))
    ok, why = PLUGINS[name]().available()
    assert not ok and "does not exist" in why
    ok, why = PLUGINS[name](weights=tmp_path).available()  # the argument wins over the environment
    package = PLUGINS[name].modules[0]
    if any(importlib.util.find_spec(m) is None for m in PLUGINS[name].modules):
        assert not ok and "not installed" in why, why
    else:
        pytest.skip(f"{package} is installed here; the missing-package branch is not reachable")


def test_plugin_scores_skips_and_runs(clean_env, tmp_path):
    class Length(MetricPlugin):  # a plug-in with no library: exercises the interface end to end
        name, env_var, modules, needs_hub_offline = "length", "DMX_TEST_LENGTH", (), False

        def _score(self, predictions, references, weights):
            assert weights == tmp_path
            return {"length_ratio": sum(map(len, predictions)) / sum(map(len, references))}

    with pytest.warns(RuntimeWarning, match="metric plug-in skipped: radgraph"):
        scores, skipped = plugin_scores(["ab"], ["abcd"], [Length(tmp_path), PLUGINS["radgraph"]()])
    assert scores == {"length_ratio": 0.5}
    assert set(skipped) == {"radgraph"} and "DMX_RADGRAPH_DIR" in skipped["radgraph"]
    with pytest.raises(ValueError, match="equally many"):
        Length(tmp_path).score(["a"], [])
    with pytest.raises(TypeError):
        MetricPlugin()  # abstract


def test_hub_plugins_require_offline_mode(clean_env, tmp_path):
    class Hub(MetricPlugin):
        name, env_var, modules = "hub", "DMX_TEST_HUB", ()

        def _score(self, predictions, references, weights):
            return {}

    clean_env.delenv("HF_HUB_OFFLINE", raising=False)
    ok, why = Hub(tmp_path).available()
    assert not ok and "HF_HUB_OFFLINE=1" in why
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    assert Hub(tmp_path).available() == (True, "")


def test_importing_eval_loads_no_heavy_library():
    code = ("import sys, dmx_jax.eval, dmx_jax.eval.plugins, dmx_jax.eval.arena; "
            "bad = [m for m in ('torch', 'transformers', 'pandas', 'nltk', 'pycocoevalcap', 'f1chexbert', "
            "'radgraph', 'bert_score') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
