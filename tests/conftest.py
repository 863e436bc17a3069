"""Test settings shared by every test folder."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run under Triton's interpreter, which must be chosen before anything imports
    # triton; this file is imported before every test module (mmvmamba imports triton through mmvmamba_kernels).
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
