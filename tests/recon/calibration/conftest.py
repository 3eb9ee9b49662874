"""The small seeded measurement the calibration tests share (coil maps, compression)."""

import pytest
import torch
from synthetic import tiny_dataset  # tests/helpers


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return tiny_dataset(matrix=(16, 16, 6), ncoils=4, acceleration=2.0, seed=0)
