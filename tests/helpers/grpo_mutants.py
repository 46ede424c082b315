"""Mutation check of the GRPO tests (tests/test_grpo_mutants.py, tests/test_grpo_variants.py): each planted bug must
turn its test red.

dmx_jax/, the test files and their helpers are copied to a temporary directory; the unpatched copy must pass, then
each mutant (one textual patch of the copy's source) runs its test there in a subprocess under `nice -n 19`. One
line per mutant: caught (the test fails) or survived (it passes); exit status 0 only when every mutant is caught.
It takes several minutes on 2 CPU cores, so it is not part of the test run:

    nice -n 19 .venv/bin/python -m tests.helpers.grpo_mutants [name ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST, VARIANTS = "tests/test_grpo_mutants.py", "tests/test_grpo_variants.py"
TESTS = (TEST, VARIANTS)
GRPO, LOSS = "dmx_jax/training/grpo.py", "dmx_jax/training/grpo_loss.py"
PROGRAMS = "dmx_jax/training/grpo_programs.py"

# name -> (file, original text (must occur once), mutated text, the test (-k) that must fail[, its file])
MUTANTS = {
    "old_logp_from_sampler": (
        GRPO,
        'old_logp = trainer_logp if cfg.old_logp == "trainer" else batch.sampler_logp',
        "old_logp = batch.sampler_logp",
        "test_old_logp_is_the_trainers_recomputation_not_the_samplers",
    ),
    "update_ignores_loss_mask": (
        PROGRAMS,
        "batch.advantages, batch.loss_mask, cfg,",
        "batch.advantages, batch.completion_mask, cfg,",
        "test_rows_masked_out_of_the_loss_do_not_reach_the_update",
    ),
    "contiguous_mini_batches": (
        GRPO,
        "stacked = self._split(batch, n_mb, cfg.group_size) if n_mb > 1 else None",
        "stacked = jax.tree.map(lambda x: x.reshape((n_mb, -1) + x.shape[1:]), batch) if n_mb > 1 else None",
        "test_mini_batches_are_group_strided",
    ),
    "overlong_penalty_twice": (
        GRPO,
        "overall = overall + pen",
        "overall = overall + pen + pen",
        "test_overlong_penalty_is_added_once",
    ),
    "seq_mean_counts_masked_rows": (
        LOSS,
        "n_seq = jnp.sum(jnp.any(mask > 0, axis=1).astype(jnp.float32))",
        "n_seq = jnp.float32(mask.shape[0])",
        "test_seq_mean_aggregations_skip_fully_masked_rows",
    ),
    "k3_no_log_ratio_clamp": (
        LOSS,
        "lr = jnp.clip(log_ratio, -20.0, 20.0)",
        "lr = log_ratio",
        "test_k3_clamps_the_log_ratio_before_exp",
    ),
    "rloo_plain_mean": (
        LOSS,
        "return (group_size / (group_size - 1) * (r - r.mean(axis=1, keepdims=True))).reshape(-1)",
        "return (r - r.mean(axis=1, keepdims=True)).reshape(-1)",
        "test_rloo_advantages_match_verl",
        VARIANTS,
    ),
    "whiten_biased_variance": (
        LOSS,
        ".sum() / jnp.maximum(n - 1.0, 1.0)",
        ".sum() / n",
        "test_reinforce_plus_plus_advantages_match_verl",
        VARIANTS,
    ),
    "gspo_ratio_keeps_gradient": (
        LOSS,
        "+ jax.lax.stop_gradient(seq)[:, None]",
        "+ seq[:, None]",
        "test_gspo_loss_and_gradient_match_verl",
        VARIANTS,
    ),
    "cispo_weight_keeps_gradient": (
        LOSS,
        "weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high))",
        "weight = jnp.clip(ratio, 1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high)",
        "test_cispo_loss_and_gradient_match_verl_and_keep_clipped_tokens",
        VARIANTS,
    ),
    "tis_weights_ignored": (
        LOSS,
        "token_loss = token_loss * jax.lax.stop_gradient(is_weights.astype(jnp.float32))",
        "token_loss = token_loss",
        "test_truncated_importance_sampling_matches_verl",
        VARIANTS,
    ),
    "entropy_bonus_sign": (
        LOSS,
        "token_loss = token_loss - cfg.entropy_coeff *",
        "token_loss = token_loss + cfg.entropy_coeff *",
        "test_entropy_bonus_is_minus_coeff_times_aggregated_entropy",
        VARIANTS,
    ),
    "shortcut_old_logp_keeps_gradient": (
        PROGRAMS,
        "old = jax.lax.stop_gradient(logp) if batch.old_logp is None",
        "old = logp if batch.old_logp is None",
        "test_on_policy_shortcut_equals_the_recomputed_pi_old",
        VARIANTS,
    ),
    "kl_reward_left_out_of_advantages": (
        GRPO,
        "self._advantages(batch.scores, loss_mask, token_rewards)",
        "self._advantages(batch.scores, loss_mask, None)",
        "test_kl_in_reward_reaches_the_rollout_advantages",
        VARIANTS,
    ),
    "adaptive_kl_never_moves": (
        GRPO,
        'state = state.replace(aux={**state.aux, "kl_reward_coef": jnp.float32(new)})',
        "pass",
        "test_adaptive_kl_in_reward_steers_the_coefficient",
        VARIANTS,
    ),
    "adaptive_kl_error_unclipped": (
        LOSS,
        "error = min(max(current_kl / target - 1.0, -0.2), 0.2)",
        "error = current_kl / target - 1.0",
        "test_adaptive_kl_coefficient_follows_verls_controller",
        VARIANTS,
    ),
}


def _pytest(workdir: Path, *args: str, tests=TESTS) -> tuple[int, str]:
    """(pytest exit status, the first failure line: file:line: error) of the test files run in workdir."""
    cmd = [
        "nice",
        "-n",
        "19",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "--tb=line",
        "-p",
        "no:cacheprovider",
        *tests,
        *args,
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no stale bytecode of a patched module
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    where = [ln.strip() for ln in out.stdout.splitlines() if ln.startswith(str(workdir))]
    return out.returncode, where[0][len(str(workdir)) + 1 :] if where else ""


def main(names: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="grpo_mutants_") as tmp:
        work = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "dmx_jax", work / "dmx_jax", ignore=ignore)
        shutil.copytree(ROOT / "tests/helpers", work / "tests/helpers", ignore=ignore)
        for f in ("pyproject.toml", "tests/conftest.py", *TESTS):
            shutil.copy(ROOT / f, work / f)
        where = subprocess.run(
            [sys.executable, "-c", "import dmx_jax.training.grpo as m; print(m.__file__)"],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not Path(where).resolve().is_relative_to(work.resolve()):
            print(f"the copy is not the imported package ({where})")
            return 2
        t0 = time.perf_counter()
        rc, why = _pytest(work)
        print(
            f"{'unmutated':28s} {'passed' if rc == 0 else f'FAILED (pytest exit {rc}) {why}'}  "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        if rc:
            return 2
        survived = 0
        for name in names or MUTANTS:
            path, old, new, test, *test_file = MUTANTS[name]
            src = (work / path).read_text()
            if src.count(old) != 1:
                print(f"{name:28s} ERROR: the original text occurs {src.count(old)} times in {path}")
                survived += 1
                continue
            (work / path).write_text(src.replace(old, new))
            t0 = time.perf_counter()
            try:
                rc, why = _pytest(work, "-k", test, tests=test_file or (TEST,))
            finally:
                (work / path).write_text(src)
            verdict = {0: "survived", 1: "caught"}.get(rc, f"ERROR (pytest exit {rc})")
            survived += verdict != "caught"
            print(f"{name:28s} {verdict:8s} {test}  {time.perf_counter() - t0:.0f} s\n{'':28s} {why}", flush=True)
        return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
