"""FLOP counting and MFU, vision tower included."""

from dmx_jax.perf.flops import FlopCount, forward_flops, mfu, peak_flops_per_device, train_flops
