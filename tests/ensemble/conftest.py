"""Fixtures of the ensemble tests: one torch thread, synthetic OOF members."""
from __future__ import annotations

import pytest
import torch

from oof_factory import synthetic_oof_members


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def synthetic_oof(tmp_path):
    """Four members: two good and independent, one over-confident, one near-copy of the best."""
    return synthetic_oof_members(tmp_path)
