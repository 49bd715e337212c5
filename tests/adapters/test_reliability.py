"""Issue 22: nothing lost, nothing silently wrong (empty inputs, bf16 saves, resume, 4-bit).

The atomic-save SIGKILL test is in test_atomic_save.py, the loader's fuzz test in
test_load_fuzz.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tera.adapters import HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig, adapt
from tera.adapters.engine import Network
from tera.adapters.tera_kernel import TuckerEvaluator

EMPTY_CONFIGS = {
    "tera": TeRAConfig(in_mode=8, out_mode=2, target_modules=["0"]),
    "vera": VeRAConfig(r=4, target_modules=["0"]),
    "hira": HiRAConfig(r=4, target_modules=["0"]),
    "lora": LoRAConfig(r=4, target_modules=["0"]),
}


# -- defect 7: empty inputs -------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(EMPTY_CONFIGS))
@pytest.mark.parametrize("path", ["materialize", "push"])
@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64), (0, 3, 64)])
def test_an_empty_input_gives_what_nn_linear_gives(kind, path, shape):
    """Shape, dtype and (zero) gradients as nn.Linear's for a batch without rows."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64))
    model = adapt(base, EMPTY_CONFIGS[kind])
    model.set_engine_path(path)
    x = torch.randn(*shape, requires_grad=True)
    y = model(x)
    y.sum().backward()
    plain = nn.Linear(64, 64)
    expected = plain(x)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    assert x.grad is not None and x.grad.shape == x.shape
    for name, p in model.adapter_parameters():
        assert p.grad is not None, name  # as nn.Linear's weight: a zero gradient, not None
        assert torch.equal(p.grad, torch.zeros_like(p)), name


@pytest.mark.parametrize("shape", [(0, 5, 6), (2, 0, 6), (0, 0, 6)])
def test_the_tucker_bank_push_takes_empty_rows_and_tokens(shape):
    """push_rows with no rows or no tokens returns an empty (rows, tokens, out) result."""
    gen = torch.Generator().manual_seed(0)
    core, a1, a2 = (torch.randn(s, generator=gen) for s in [(3, 2), (3, 6), (2, 4)])
    d1, d2 = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
    net = Network(("ab", "a", "ai", "b", "bo"), (core, d1[0], a1, d2[0], a2), "i", "o", (6,), (4,))
    x = torch.randn(*shape, generator=gen)
    rows = torch.zeros(shape[0], dtype=torch.long)
    y = TuckerEvaluator(net).push_rows(
        (core, d1, a1, d2, a2), (False, True, False, True, False), x, rows
    )
    assert y.shape == (shape[0], shape[1], 4)
