"""Run N CPU processes of a worker script that joins jax.distributed on a free local port."""

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(script: str, num_processes: int, out: Path, timeout: float, extra: tuple[str, ...] = ()) -> None:
    """`python <script> <process_id> <num_processes> <port> <out> [extra...]` for each process; fails with logs."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / script), str(i), str(num_processes), str(port), str(out), *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
