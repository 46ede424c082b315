"""The README's test command is exactly what CI runs; dmx_jax imports without the test-only references."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    run_cmd, test_cmd = _readme_commands()
    assert "experiments.run" in run_cmd and "pytest" in test_cmd
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'pandas', 'nltk', 'pycocoevalcap', 'rouge_score'}:
            raise ImportError('blocked for this test: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_library_imports_without_test_only_packages():
    mods = [
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for pkg in ("dmx_jax", "data_pipelines")
        for p in (ROOT / pkg).rglob("*.py")
        if "__main__" not in p.name
    ]
    code = BLOCKER + f"import importlib\nfor m in {sorted(mods)!r}:\n    importlib.import_module(m)\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
