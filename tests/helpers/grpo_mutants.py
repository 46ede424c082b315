"""Mutation check of tests/test_grpo_mutants.py: each planted GRPO bug must turn its test red.

dmx_jax/, the test file and its helpers are copied to a temporary directory; the unpatched copy must pass, then each
mutant (one textual patch of the copy's source) runs its test there in a subprocess under `nice -n 19`. One line per
mutant: caught (the test fails) or survived (it passes); exit status 0 only when every mutant is caught. It takes a
few minutes on 2 CPU cores, so it is not part of the test run:

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
TEST = "tests/test_grpo_mutants.py"
GRPO, LOSS = "dmx_jax/training/grpo.py", "dmx_jax/training/grpo_loss.py"

# name -> (file, original text (must occur once), mutated text, the test (-k) that must fail)
MUTANTS = {
    "old_logp_from_sampler": (
        GRPO, 'batch["old_logp"] = trainer_logp if cfg.old_logp == "trainer" else sampler_logp',
        'batch["old_logp"] = sampler_logp', "test_old_logp_is_the_trainers_recomputation_not_the_samplers"),
    "update_ignores_loss_mask": (
        GRPO, 'batch["loss_mask"] if "loss_mask" in batch else batch["completion_mask"]',
        'batch["completion_mask"]', "test_rows_masked_out_of_the_loss_do_not_reach_the_update"),
    "contiguous_mini_batches": (
        GRPO, "stacked = self._split(batch, n_mb, cfg.group_size) if n_mb > 1 else None",
        "stacked = jax.tree.map(lambda x: x.reshape((n_mb, -1) + x.shape[1:]), batch) if n_mb > 1 else None",
        "test_mini_batches_are_group_strided"),
    "overlong_penalty_twice": (
        GRPO, "overall = overall + pen", "overall = overall + pen + pen", "test_overlong_penalty_is_added_once"),
    "seq_mean_counts_masked_rows": (
        LOSS, "n_seq = jnp.sum(jnp.any(mask > 0, axis=1).astype(jnp.float32))",
        "n_seq = jnp.float32(mask.shape[0])", "test_seq_mean_aggregations_skip_fully_masked_rows"),
    "k3_no_log_ratio_clamp": (
        LOSS, "lr = jnp.clip(log_ratio, -20.0, 20.0)", "lr = log_ratio", "test_k3_clamps_the_log_ratio_before_exp"),
}


def _pytest(workdir: Path, *args: str) -> tuple[int, str]:
    """(pytest exit status, the first failure line: file:line: error) of the test file run in workdir."""
    cmd = ["nice", "-n", "19", sys.executable, "-m", "pytest", "-q", "-x", "--tb=line", "-p", "no:cacheprovider",
           TEST, *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}        # no stale bytecode of a patched module
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    where = [ln.strip() for ln in out.stdout.splitlines() if ln.startswith(str(workdir))]
    return out.returncode, where[0][len(str(workdir)) + 1:] if where else ""


def main(names: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="grpo_mutants_") as tmp:
        work = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "dmx_jax", work / "dmx_jax", ignore=ignore)
        shutil.copytree(ROOT / "tests/helpers", work / "tests/helpers", ignore=ignore)
        for f in ("pyproject.toml", "tests/conftest.py", TEST):
            shutil.copy(ROOT / f, work / f)
        where = subprocess.run([sys.executable, "-c", "import dmx_jax.training.grpo as m; print(m.__file__)"],
                               cwd=work, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(work.resolve()):
            print(f"the copy is not the imported package ({where})")
            return 2
        t0 = time.perf_counter()
        rc, why = _pytest(work)
        print(f"{'unmutated':28s} {'passed' if rc == 0 else f'FAILED (pytest exit {rc}) {why}'}  "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            return 2
        survived = 0
        for name in names or MUTANTS:
            path, old, new, test = MUTANTS[name]
            src = (work / path).read_text()
            if src.count(old) != 1:
                print(f"{name:28s} ERROR: the original text occurs {src.count(old)} times in {path}")
                survived += 1
                continue
            (work / path).write_text(src.replace(old, new))
            t0 = time.perf_counter()
            try:
                rc, why = _pytest(work, "-k", test)
            finally:
                (work / path).write_text(src)
            verdict = {0: "survived", 1: "caught"}.get(rc, f"ERROR (pytest exit {rc})")
            survived += verdict != "caught"
            print(f"{name:28s} {verdict:8s} {test}  {time.perf_counter() - t0:.0f} s\n{'':28s} {why}", flush=True)
        return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
