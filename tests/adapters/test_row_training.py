"""Training many adapters at once: a group checked out of the rows, RowAdamW, check-in.

Laws: RowAdamW is torch's AdamW applied to each row on the steps whose gradient names it
(tolerance 1e-6 relative: the same float32 formula, its scalars formed per row from
float64 step counts instead of per tensor); a group trained on mixed batches gives each
adapter what training it alone on its own rows gives (tolerance 1e-5: the gradients agree to
float32 rounding, the mixed path summing the same products in another order, and three
AdamW steps of size ~lr keep that); an adapter with no row in any batch does not move at
all (bit for bit), nor does any adapter outside the group.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tera.adapters import AdaptedModel, adapt
from tera.adapters.groups import RowAdamW
from tera.errors import AdapterStateError, ConfigError
from tests.adapters.common import llama, make_config, randomize_adapter

LR, WD = 1e-2, 0.1


def test_row_adamw_is_adamw_row_by_row():
    torch.manual_seed(0)
    start = torch.randn(5, 4)
    w = torch.nn.Parameter(start.clone())
    opt = RowAdamW([w], lr=0.05, weight_decay=0.1)
    alone = [torch.nn.Parameter(start[i].clone()) for i in range(5)]
    refs = [torch.optim.AdamW([p], lr=0.05, weight_decay=0.1) for p in alone]
    steps = [[0, 1], [1, 2], [0], [1, 3, 1]]  # row 4 never; row 1 twice in the last
    for present in steps:
        up = torch.randn(len(present), 4)
        up[-1] = 0.0 if present == [1, 2] else up[-1]  # present with a zero gradient
        (F.embedding(torch.tensor(present), w, sparse=True) * up).sum().backward()
        opt.step()
        opt.zero_grad()
        for i in set(present):
            alone[i].grad = sum(up[j] for j, r in enumerate(present) if r == i)
            refs[i].step()
            refs[i].zero_grad()
    for i in range(5):
        torch.testing.assert_close(w[i], alone[i], rtol=1e-6, atol=1e-7, msg=f"row {i}")
    assert torch.equal(w[4], start[4])  # never used: no weight decay, nothing
    assert opt.state[w]["step"].tolist() == [2.0, 3.0, 1.0, 1.0, 0.0]
    with pytest.raises(AdapterStateError, match="sparse row gradient"):
        w.grad = torch.ones_like(w)
        opt.step()
    with pytest.raises(ConfigError):
        RowAdamW([w], lr=-1.0)
    with pytest.raises(ConfigError):
        RowAdamW([w], betas=(0.9, 1.0))
    # a closure is evaluated; a step naming no row changes nothing
    w.grad = None
    F.embedding(torch.zeros(0, dtype=torch.long), w, sparse=True).sum().backward()
    kept = w.detach().clone()
    assert float(opt.step(lambda: 3.0)) == 3.0
    assert torch.equal(w, kept)


def _model() -> AdaptedModel:
    """a0 a module adapter (active); r1..r4 TeRA row adapters, each its own tensors."""
    config = make_config("tera", "llama")
    model = adapt(llama(), config, adapter_name="a0")
    names = ["a0", "r1", "r2", "r3", "r4"]
    for name in names[1:]:
        model.add_adapter(name, config)
    for i, name in enumerate(names):
        model.set_adapter(name)
        randomize_adapter(model, seed=40 + i)
    model.set_adapter("a0")
    return model


STEPS = [["r1", "r2"], ["r2", "r2", "__base__"], ["r1", "__base__"]]  # r3 never named


def _ids(step: int, rows: int) -> torch.Tensor:
    return torch.randint(1, 100, (rows, 6), generator=torch.Generator().manual_seed(step))


def _loss(logits: torch.Tensor) -> torch.Tensor:
    """Each row's own loss, summed: a row's gradient reaches its adapter only."""
    return logits.pow(2).mean(dim=(1, 2)).sum()


def test_a_group_trains_each_adapter_as_if_alone_and_leaves_the_rest():
    model = _model()
    model.pack_adapters(["r1", "r2", "r3", "r4"])
    before = {n: model.adapter_rows.bank(n).state(n) for n in ("r1", "r2", "r3", "r4")}
    with model.train_adapters(["r1", "r2", "r3"]) as group:
        opt = group.optimizer(lr=LR, weight_decay=WD)
        assert tuple(group.weight.shape) == (3, model.adapter_rows.bank("r4").layout.width)
        for step, names in enumerate(STEPS):
            _loss(model(input_ids=_ids(step, len(names)), adapter_names=names).logits).backward()
            assert group.weight.grad.is_sparse
            opt.step()
            opt.zero_grad()
        # state for the group's rows only; no gradient anywhere else
        assert opt.state[group.weight]["exp_avg"].shape == group.weight.shape
        assert opt.state[group.weight]["step"].tolist() == [2.0, 2.0, 0.0]
        assert all(p.grad is None for p in model.parameters())
    after = {n: model.adapter_rows.bank(n).state(n) for n in ("r1", "r2", "r3", "r4")}
    for name in ("r3", "r4"):  # never named, or not in the group: bit for bit
        assert all(torch.equal(before[name][k], after[name][k]) for k in before[name])
    for name in ("r1", "r2"):
        assert any(not torch.equal(before[name][k], after[name][k]) for k in before[name])
    # each trained adapter equals training it alone, on its own rows, with AdamW
    reference = _model()
    for name in ("r1", "r2"):
        reference.set_adapter(name)
        params = [p for _, p in reference.adapter_parameters(name)]
        ref_opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD)
        for step, names in enumerate(STEPS):
            mine = [b for b, n in enumerate(names) if n == name]
            if mine:
                _loss(reference(input_ids=_ids(step, len(names))[mine]).logits).backward()
                ref_opt.step()
                ref_opt.zero_grad()
        for key, p in reference.adapter_parameters(name):
            torch.testing.assert_close(after[name][key], p.detach(), atol=1e-5, rtol=1e-5)


def test_a_checked_out_group_serves_its_current_values():
    model = _model()
    model.pack_adapters(["r1", "r2"])
    ids = _ids(0, 2)
    with torch.no_grad():
        before = model(input_ids=ids, adapter_names=["r1", "r2"]).logits
    group = model.train_adapters(["r1", "r2"])
    with torch.no_grad():
        same = model(input_ids=ids, adapter_names=["r1", "r2"]).logits
        group.weight[1].mul_(1.5)
        moved = model(input_ids=ids, adapter_names=["r1", "r2"]).logits
    torch.testing.assert_close(same, before, atol=0, rtol=0)
    torch.testing.assert_close(moved[0], before[0], atol=0, rtol=0)
    assert not torch.allclose(moved[1], before[1])
    (bank,) = model.adapter_rows.banks.values()
    assert tuple(group.state("r2")) == bank.layout.keys
    group.check_in()
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, adapter_names=["r1", "r2"]).logits, moved, atol=0, rtol=0
        )


def test_bad_groups_are_refused():
    model = _model()
    model.add_adapter("v", make_config("vera", "llama"))
    model.pack_adapters(["r1", "r2", "v"])
    with pytest.raises(AdapterStateError, match="at least one"):
        model.train_adapters([])
    with pytest.raises(AdapterStateError, match="2 banks"):
        model.train_adapters(["r1", "v"])
    with pytest.raises(AdapterStateError, match="no row adapter"):
        model.train_adapters(["r3"])  # a module adapter
    group = model.train_adapters(["r1"])
    assert "1 adapters" in repr(group)
    with pytest.raises(AdapterStateError, match="checked out"):
        model.train_adapters(["r1"])
    with pytest.raises(AdapterStateError, match="checked out"):
        model.set_adapter("r1")
    with torch.no_grad():
        group.weight[0, 0] = float("nan")
    with pytest.raises(AdapterStateError, match="NaN"):
        group.check_in()
    assert "r1" in model.adapter_rows  # still checked out, nothing half done
    with torch.no_grad():
        group.weight[0, 0] = 1.0
    group.check_in()
    with pytest.raises(AdapterStateError, match="already"):
        group.check_in()
    orphan = model.train_adapters(["r2"])
    model.unload()
    with pytest.raises(AdapterStateError, match="removed"):
        orphan.check_in()
