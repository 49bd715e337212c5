"""Training many adapters at once: a group of row adapters checked out as one trainable table.

:meth:`AdaptedModel.train_adapters <tera.adapters.AdaptedModel.train_adapters>` checks a
group of row adapters of one bank out into a :class:`RowGroup`: one parameter, ``(adapters,
width)``, holding their rows and nothing else (no gradient, no optimizer state for the
model's other adapters). A batch whose rows name adapters of the group
(``adapter_names=[...]``) trains all of them in one step: each row's loss reaches its own
adapter's row only (the rows are gathered with ``F.embedding(..., sparse=True)``, so the
gradient is a sparse tensor naming exactly the adapters the batch used, even those whose
gradient is zero).

:class:`RowAdamW` is AdamW applied row by row to those rows only: an adapter with no row in
a batch does not move (AdamW's momentum and weight decay would move every row of a dense
parameter) and keeps its own step count, so each adapter follows the trajectory it would
follow trained alone on the steps that name it. ``check_in()`` (or the end of a ``with``
block) puts the rows back into the bank.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from tera.adapters import VeRAConfig, adapt
>>> config = VeRAConfig(r=4, target_modules=["0"])
>>> model = adapt(nn.Sequential(nn.Linear(8, 8)), config)
>>> for name in ("a", "b", "c"):
...     model.add_adapter(name, config)
>>> model.pack_adapters(["a", "b", "c"])
>>> before = model.adapter_rows.bank("c").state("c")
>>> with model.train_adapters(["a", "b", "c"]) as group:
...     opt = group.optimizer(lr=0.1)
...     x = torch.randn(2, 8)
...     model(x, adapter_names=["a", "b"]).pow(2).sum().backward()
...     opt.step(); opt.zero_grad()
>>> after = model.adapter_rows.bank("c").state("c")
>>> all(torch.equal(before[k], after[k]) for k in before)   # "c" had no row: unmoved
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tera.adapters.rows import AdapterRows, RowBank
from tera.errors import AdapterStateError, ConfigError

__all__ = ["RowAdamW", "RowGroup"]


class RowGroup(nn.Module):
    """Row adapters of one bank checked out for training: one parameter ``(adapters, width)``.

    Built by :meth:`AdaptedModel.train_adapters <tera.adapters.AdaptedModel.train_adapters>`.
    While checked out, mixed batches gather these adapters' rows from :attr:`weight`
    (with gradients); :meth:`check_in` puts them back into their bank.

    Attributes
    ----------
    weight : nn.Parameter
        Row ``i`` is adapter ``names[i]`` (its tensors laid out by the bank's
        :class:`~tera.adapters.rows.RowLayout`).
    names : tuple of str
    key : str
        The bank's key (the layers' slots of the bank serve the group).
    """

    def __init__(
        self, rows: AdapterRows, bank: RowBank, names: Sequence[str], device: torch.device
    ) -> None:
        super().__init__()
        self.key = bank.key
        self.names = tuple(names)
        self._position = {n: i for i, n in enumerate(self.names)}
        self.weight = nn.Parameter(bank.gather(self.names, device).clone())
        self._bank, self._rows = bank, rows
        self.checked_in = False

    def gather(self, names: Sequence[str], device: torch.device) -> torch.Tensor:
        """The rows of ``names`` (sparse gradients to :attr:`weight` when training)."""
        index = torch.tensor([self._position[n] for n in names], device=self.weight.device)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            out = F.embedding(index, self.weight, sparse=True)
        else:
            out = self.weight.detach().index_select(0, index)
        return out if out.device == device else out.to(device)

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """The current tensors of adapter ``name``, named as in its file (copies)."""
        row = self.weight.detach()[self._position[name]].to("cpu")
        return {k: v.clone() for k, v in self._bank.layout.unflatten(row).items()}

    def optimizer(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> RowAdamW:
        """A :class:`RowAdamW` over :attr:`weight` (torch's AdamW defaults)."""
        return RowAdamW([self.weight], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def check_in(self) -> None:
        """Put the rows back into their bank (the model serves them as before, trained).

        Raises
        ------
        AdapterStateError
            Already checked in, or some rows hold NaN/inf (a diverged run: nothing is
            checked in; fix or reset those rows of :attr:`weight` first).
        """
        if self.checked_in:
            raise AdapterStateError("this group was already checked in")
        rows = self.weight.detach().to("cpu", torch.float32)
        bad = [
            n
            for n, ok in zip(self.names, torch.isfinite(rows).all(1).tolist(), strict=True)
            if not ok
        ]
        if bad:
            raise AdapterStateError(
                f"adapters {bad[:5]} hold NaN/inf after training; nothing was checked in "
                "(reset their rows of group.weight, or lower the learning rate and retrain)"
            )
        if self._rows.banks.get(self.key) is not self._bank:
            raise AdapterStateError(
                "the model's row adapters were removed (unload()) since check-out"
            )
        for i, name in enumerate(self.names):
            self._bank.add(name, rows[i])
            self._rows.groups.pop(name, None)
        self.checked_in = True

    def __enter__(self) -> RowGroup:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if not self.checked_in:
            self.check_in()

    def extra_repr(self) -> str:
        """Shown by ``print(group)``."""
        return f"{len(self.names)} adapters, {self.weight.shape[1]} floats each"


class RowAdamW(torch.optim.Optimizer):
    """AdamW on the rows a step's sparse gradient names; every other row stays as it is.

    For each row ``i`` present in the gradient (an adapter the batch used), with its own
    step count ``t_i``: ``p_i <- p_i (1 - lr wd)``, ``m_i <- b1 m_i + (1 - b1) g_i``,
    ``v_i <- b2 v_i + (1 - b2) g_i^2``, ``p_i <- p_i - lr / (1 - b1^t_i) m_i /
    (sqrt(v_i / (1 - b2^t_i)) + eps)``: torch's ``AdamW`` for that row alone. Rows absent
    from the gradient keep their values, moments and step count. The gradient must be the
    sparse one a :class:`RowGroup` gives (a dense one does not say which rows were used).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.groups import RowAdamW
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> opt = RowAdamW([w], lr=0.1)
    >>> torch.nn.functional.embedding(torch.tensor([0]), w, sparse=True).sum().backward()
    >>> opt.step()
    >>> w[1:].tolist()   # rows 1 and 2 had no gradient: untouched, no weight decay
    [[1.0, 1.0], [1.0, 1.0]]
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if not lr >= 0 or not eps >= 0 or not weight_decay >= 0:
            raise ConfigError(
                f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}"
            )
        if not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"betas must be in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamW step on the rows each parameter's sparse gradient names."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise AdapterStateError(
                        "RowAdamW needs the sparse row gradient of a RowGroup (a dense gradient "
                        "does not say which rows a batch used); use torch.optim.AdamW otherwise"
                    )
                grad = p.grad.coalesce()
                rows, g = grad.indices()[0], grad.values()
                if rows.numel() == 0:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(p.shape[0], dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                step = state["step"].index_select(0, rows) + 1
                state["step"].index_copy_(0, rows, step)
                param = p.index_select(0, rows).mul_(1 - lr * wd)
                m = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - b1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
                shape = (-1,) + (1,) * (p.dim() - 1)
                step_size = (lr / (1 - b1**step)).to(p.dtype).reshape(shape)
                bias2_sqrt = ((1 - b2**step) ** 0.5).to(p.dtype).reshape(shape)
                denom = (v.sqrt() / bias2_sqrt).add_(eps)
                param.sub_(step_size * m / denom)
                p.index_copy_(0, rows, param)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
        return loss
