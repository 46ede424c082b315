"""What the torch transcriptions of verl's formulas share (tests/test_grpo_formulas.py, tests/test_grpo_variants.py).

Import `torch_float64` into a test module to run its references in float64: an autouse fixture that restores the
previous default dtype afterwards, so other modules' torch models stay fp32.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def torch_float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def ref_masked_mean(x, mask):
    """verl_F.masked_mean over the whole batch."""
    return (x * mask).sum() / mask.sum()
