"""XLA_FLAGS of the suite's processes (conftest and the multi-process workers), set before jax is imported.

The suite compiles hundreds of small programs and runs most of them a few times, so LLVM's optimisation passes
cost more time than they save: the CPU backend compiles at optimisation level 0. Same HLO and float semantics
(no fast-math at any level); only the machine code is slower.
"""

BACKEND = "--xla_backend_optimization_level=0"


def host_devices(n: int) -> str:
    """XLA_FLAGS for n host CPU devices."""
    return f"--xla_force_host_platform_device_count={n} {BACKEND}"
