"""Mixed batches: every row of one model call through the adapter it names.

``model(..., adapter_names=[...])`` (and ``generate``) enter :func:`route`, which checks the
names once and sets a :class:`RowRouter` for the call in
:data:`~tera.adapters.layer.ROW_ROUTING` (a context variable: per thread and per asyncio
task, never state on the shared layers). Each adapted layer hands the call to the router,
which groups the batch's adapters into **banks** (same kind, same frozen operands, same
shapes, scale and dropout) and runs a bank through its evaluator's ``push_rows`` in one
pass: TeRA and VeRA scale activations per row between shared GEMMs, LoRA gathers its
matrices for batched GEMMs. An adapter that belongs to no bank (HiRA, whose ``dW`` depends
on ``W0``) runs on its own rows through the layer's one body (:meth:`AdapterLinear.run`).

Adapters held as rows (:mod:`tera.adapters.rows`: a store's, packed ones, a training
group's) are gathered once per call, bank by bank (one ``index_select`` of their rows, kept
by the call's router for all its layers and decoding steps); every layer slices its
tensors out of them. Nothing is stacked or cached per batch composition: any draw of
adapters costs the same.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from tera.adapters import LoRAConfig, adapt
>>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
>>> model.add_adapter("bob", LoRAConfig(r=2, target_modules=["0"]))
>>> x = torch.randn(3, 8)
>>> y = model(x, adapter_names=["default", "__base__", "bob"])
>>> torch.equal(y[1], model.base_model[0].base_layer(x)[1])
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from tera.adapters.base import Adapter
from tera.adapters.engine import Evaluator, needs_backward
from tera.adapters.layer import ROW_ROUTING, AdapterLinear
from tera.adapters.rows import AdapterRows, RowSlot, RowSource
from tera.errors import AdapterStateError, ShapeError

__all__ = ["BANK_CACHE", "BASE_ADAPTER", "PLAN_CACHE", "RowAdapters", "RowRouter", "route"]

BANK_CACHE = 4
"""Stacked banks an adapted layer keeps per batch composition (the most recent ones).

Inference reuses a bank while its adapters' tensors are unchanged (every decoding step of a
``generate`` call, or repeated batches of the same adapters); a new composition stacks its
adapters' tensors again (cheap for TeRA's and VeRA's vectors, a copy of the batch's LoRA
matrices for LoRA) and evicts the oldest.
"""

PLAN_CACHE = 64
"""Groupings of a batch's adapters into banks an adapted layer remembers (most recent)."""

BASE_ADAPTER = "__base__"
"""The name a row of a mixed batch gives to get the base model's output (PEFT's)."""

_Group = tuple[list[int], list[str], "tuple[object, ...] | None"]
"""Positions in the batch's names, the adapters' names, and their bank key (None: alone)."""


@dataclass
class RowAdapters:
    """Which adapter each leading row of a mixed batch uses (built once per model call).

    Attributes
    ----------
    names : tuple of str
        The distinct adapter names of the batch, in order of first appearance.
    index : torch.Tensor
        ``(rows,)``: row ``b`` uses ``names[index[b]]`` (a CPU ``int64`` tensor).

    Examples
    --------
    >>> from tera.adapters.batch import RowAdapters
    >>> batch = RowAdapters.from_names(["alice", "__base__", "alice"])
    >>> batch.names, batch.index.tolist()
    (('alice', '__base__'), [0, 1, 0])
    """

    names: tuple[str, ...]
    index: torch.Tensor
    _cache: dict[tuple[object, ...], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> RowAdapters:
        """From one adapter name per row."""
        distinct = tuple(dict.fromkeys(names))
        position = {n: i for i, n in enumerate(distinct)}
        return cls(distinct, torch.tensor([position[n] for n in names], dtype=torch.long))

    @property
    def rows(self) -> int:
        """Number of rows named."""
        return int(self.index.shape[0])

    def rows_of(self, positions: Sequence[int], rows: int, device: torch.device) -> torch.Tensor:
        """Indices of the rows using any of ``names[positions]`` (cached per device).

        ``rows`` may be a multiple of :attr:`rows`: generation with several beams or
        return sequences repeats every prompt's row (``repeat_interleave``).
        """
        key = ("rows", tuple(positions), rows, device)
        found = self._cache.get(key)
        if found is None:
            index = self.expanded(rows)
            mask = torch.zeros(len(self.names), dtype=torch.bool)
            mask[list(positions)] = True
            found = torch.nonzero(mask[index]).reshape(-1).to(device)
            self._cache[key] = found
        return cast(torch.Tensor, found)

    def expanded(self, rows: int) -> torch.Tensor:
        """``index`` for ``rows`` leading rows (each name repeated ``rows / self.rows``)."""
        if rows == self.rows:
            return self.index
        if not self.rows or rows % self.rows:
            raise ShapeError(
                f"adapter_names gives {self.rows} names but the layer sees {rows} rows; give "
                "one name per row of the batch"
            )
        return self.index.repeat_interleave(rows // self.rows)

    def local_index(
        self, positions: list[int], index: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """For the rows using ``names[positions]``: each one's position in that list."""
        key = ("local", tuple(positions), int(index.shape[0]), device)
        found = self._cache.get(key)
        if found is None:
            lookup = torch.full((len(self.names),), -1, dtype=torch.long)
            lookup[list(positions)] = torch.arange(len(positions))
            local = lookup[index]
            found = local[local >= 0].to(device)  # the selected rows, in order
            self._cache[key] = found
        return cast(torch.Tensor, found)


@contextlib.contextmanager
def route(
    names: Sequence[str],
    layers: Sequence[AdapterLinear],
    known: Collection[str],
    first_input: object = None,
    rows: AdapterRows | None = None,
) -> Iterator[None]:
    """Inside, every adapted layer runs row ``b`` through adapter ``names[b]`` (this call only).

    Parameters
    ----------
    names : sequence of str
        One adapter name per row, :data:`BASE_ADAPTER` for the base model.
    layers : sequence of AdapterLinear
        The model's adapted layers (checked: none may be merged).
    known : collection of str
        The adapters the model holds as modules.
    first_input : object, optional
        The call's first input (``input_ids``, ...): its rows are checked against ``names``.
    rows : AdapterRows, optional
        The adapters the model holds as rows.

    Raises
    ------
    AdapterStateError
        ``names`` is not a list of names, names an adapter the model does not hold, or the
        model is merged (its weights hold one adapter).
    LoadError
        ``names`` names a row adapter that was refused (a corrupted shard, ...).
    ShapeError
        ``names`` does not give one name per row.
    """
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise AdapterStateError(
            f"adapter_names must be a list of adapter names, one per row, got {names!r}"
        )
    held = rows if rows is not None else ()
    unknown = sorted({n for n in names if n != BASE_ADAPTER and n not in known and n not in held})
    if unknown:
        for name in unknown:
            if rows is not None:
                rows.check(name)  # a refused row adapter: its reason
        extra = f" and {len(rows)} row adapter(s)" if rows is not None and len(rows) else ""
        raise AdapterStateError(
            f"adapter_names names {unknown[:8]}, which this model does not hold; it holds "
            f"{list(known)[:8]}{extra} (and {BASE_ADAPTER!r} gives the base model)"
        )
    if any(layer.merged for layer in layers):
        raise AdapterStateError(
            "a merged model cannot serve a mixed batch (its weights hold one adapter); "
            "call unmerge() first"
        )
    if (
        isinstance(first_input, torch.Tensor)
        and first_input.ndim >= 1
        and first_input.shape[0] != len(names)
    ):
        raise ShapeError(
            f"adapter_names gives {len(names)} names for a batch of {first_input.shape[0]} "
            "rows; give one name per row"
        )
    token = ROW_ROUTING.set(RowRouter(RowAdapters.from_names(list(names)), rows))
    try:
        yield
    finally:
        ROW_ROUTING.reset(token)


class RowRouter:
    """Runs one call's mixed batch on every adapted layer it reaches (one per call).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt
    >>> from tera.adapters.batch import RowAdapters, RowRouter
    >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
    >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
    >>> layer, x = model.adapter_layers["0"], torch.randn(2, 16)
    >>> router = RowRouter(RowAdapters.from_names(["default", "__base__"]))
    >>> torch.equal(router.forward(layer, x)[1], layer.base_layer(x)[1])
    True
    """

    def __init__(self, batch: RowAdapters, rows: AdapterRows | None = None) -> None:
        self.batch = batch
        self.rows = rows
        # per call (this router is the call's own): the row adapters of the batch grouped
        # by where their rows come from, and their rows once gathered
        self._row_groups: list[tuple[RowSource, list[int], list[str]]] | None = None
        self._gathered: dict[tuple[object, ...], Any] = {}
        self._has_modules: bool | None = None

    def row_groups(self) -> list[tuple[RowSource, list[int], list[str]]]:
        """The batch's row adapters by source: ``(source, positions in names, names)``."""
        found = self._row_groups
        if found is None:
            groups: dict[int, tuple[RowSource, list[int], list[str]]] = {}
            rows = self.rows
            if rows is not None and len(rows):
                for position, name in enumerate(self.batch.names):
                    if name != BASE_ADAPTER and name in rows:
                        source = rows.source(name)
                        entry = groups.setdefault(id(source), (source, [], []))
                        entry[1].append(position)
                        entry[2].append(name)
            found = self._row_groups = list(groups.values())
        return found

    def has_modules(self) -> bool:
        """Whether the batch names an adapter held as a module (else: rows and base only)."""
        found = self._has_modules
        if found is None:
            rows = self.rows if self.rows is not None else ()
            names = self.batch.names
            found = self._has_modules = any(n != BASE_ADAPTER and n not in rows for n in names)
        return found

    def gathered(self, source: RowSource, names: list[str], device: torch.device) -> torch.Tensor:
        """The rows of ``names`` from ``source`` on ``device``: gathered once per call."""
        key = (id(source), device, torch.is_grad_enabled())
        found = self._gathered.get(key)
        if found is None:
            found = self._gathered[key] = source.gather(names, device)
        return found

    def forward(
        self, layer: AdapterLinear, x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Row ``b`` of ``x`` through the adapter the batch names for it (or none).

        Rows naming :data:`BASE_ADAPTER`, or an adapter this layer does not hold, get the
        base layer's output.
        """
        batch = self.batch
        if x.shape[-1:] != (layer.in_features,) or x.ndim < 2:
            raise ShapeError(
                f"input of shape {tuple(x.shape)} does not fit a mixed batch on this layer: "
                f"(rows, ..., in_features={layer.in_features}) with one adapter name per row"
            )
        result: torch.Tensor = layer.base_layer(x, *args, **kwargs)
        n_rows = int(x.shape[0])
        index = batch.expanded(n_rows)  # checks the row count
        if result.numel() == 0:
            return result
        x3 = x.reshape(n_rows, -1, layer.in_features)
        out3 = result.reshape(n_rows, -1, layer.out_features)
        groups: list[_Group] = []
        for positions, names, bank in plan_banks(layer, batch) if self.has_modules() else ():
            if bank is not None and runs_one_by_one(layer, batch, names, positions, x3):
                groups += [([p], [n], None) for p, n in zip(positions, names, strict=True)]
            else:
                groups.append((positions, names, bank))
        for positions, names, bank in groups:
            sel = batch.rows_of(positions, n_rows, x.device)
            if sel.numel() == 0:
                continue
            whole = sel.numel() == n_rows
            xs = x3 if whole else x3.index_select(0, sel)
            if bank is not None:
                ops, stacked, evaluator, dropout = _bank_operands(layer, names, xs)
                local = batch.local_index(positions, index, x.device)
                ys = evaluator.push_rows(ops, stacked, dropout(xs).to(ops[0].dtype), local)
            else:
                adapter: Adapter = layer.adapters[names[0]]  # type: ignore[assignment]
                ys = layer.run(names[0], xs, layer.weight_for(adapter, xs))
            ys = ys.to(out3.dtype)
            out3 = out3 + ys if whole else out3.index_add(0, sel, ys)
        for source, positions, names in self.row_groups():
            slot = layer.row_slots.get(source.key)
            if slot is not None:
                out3 = self._run_rows(layer, slot, source, positions, names, x3, out3, index)
        return out3.reshape(result.shape)

    def _run_rows(
        self,
        layer: AdapterLinear,
        slot: RowSlot,
        source: RowSource,
        positions: list[int],
        names: list[str],
        x3: torch.Tensor,
        out3: torch.Tensor,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """Add the outputs of row adapters ``names`` (one bank) to their rows of ``out3``."""
        batch, n_rows, device = self.batch, int(x3.shape[0]), x3.device
        sel = batch.rows_of(positions, n_rows, device)
        if sel.numel() == 0:
            return out3
        whole = sel.numel() == n_rows
        xs = x3 if whole else x3.index_select(0, sel)
        w0 = layer.weight_for(slot.adapter, xs)
        engine = slot.engine(w0)
        table = self.gathered(source, names, w0.device)
        backward = torch.is_grad_enabled() and table.requires_grad
        key = ("rows-split", id(layer), source.key, tuple(positions), n_rows, x3.shape[1], backward)
        split = batch._cache.get(key)
        if split is None:
            counts = torch.bincount(index, minlength=len(batch.names))
            tokens = [int(counts[p]) * int(x3.shape[1]) for p in positions]
            split = batch._cache[key] = layer.split_bank(engine, tokens, backward)
        training = layer.training and slot.dropout > 0
        if split:  # adapter by adapter, each on the one body of a layer
            dropout: nn.Module = nn.Dropout(slot.dropout) if training else layer._no_dropout
            for i, position in enumerate(positions):
                rsel = batch.rows_of([position], n_rows, device)
                if rsel.numel():
                    one = slot.operands(w0, table[i])
                    y = layer.run_with(engine, one, dropout, x3.index_select(0, rsel), w0)
                    out3 = out3.index_add(0, rsel, y.to(out3.dtype))
            return out3
        ops_key = ("ops", id(layer), id(source), w0.dtype, w0.device, backward)
        ops: list[torch.Tensor] | None = self._gathered.get(ops_key)  # once per call
        if ops is None:
            ops = self._gathered[ops_key] = engine.operands(slot.operands(w0, table))
        local = batch.local_index(positions, index, device)
        xin = slot.apply_dropout(xs, training).to(ops[0].dtype)
        ys = engine.evaluator.push_rows(ops, slot.stacked, xin, local).to(out3.dtype)
        return out3 + ys if whole else out3.index_add(0, sel, ys)


def plan_banks(layer: AdapterLinear, batch: RowAdapters) -> list[_Group]:
    """The batch's adapters on ``layer`` grouped into banks (remembered per set of names)."""
    key = ("plan", batch.names)
    found = layer.bank_cache.get(key)
    if found is not None:
        return cast(list[_Group], found)
    groups: dict[tuple[object, ...], tuple[list[int], list[str]]] = {}
    loners: list[_Group] = []
    for position, name in enumerate(batch.names):
        if name == BASE_ADAPTER or name not in layer.adapters:
            continue
        bank = _bank_key(layer, name)
        if bank is None:
            loners.append(([position], [name], None))
        else:
            entry = groups.setdefault(bank, ([], []))
            entry[0].append(position)
            entry[1].append(name)
    plan: list[_Group] = [(p, n, b) for b, (p, n) in groups.items()] + loners
    _remember(layer.bank_cache, "plan", key, plan, PLAN_CACHE)
    return plan


def runs_one_by_one(
    layer: AdapterLinear,
    batch: RowAdapters,
    names: list[str],
    positions: list[int],
    x3: torch.Tensor,
) -> bool:
    """Whether a bank runs adapter by adapter (the layer decides, from the engine's prices).

    Decided once per call and bank (the batch remembers it).
    """
    tokens = int(x3.shape[1])
    params = [p for n in names for p in layer.adapters[n].parameters()]
    backward = needs_backward(params)
    key = ("one-by-one", id(layer), tuple(positions), int(x3.shape[0]), tokens, backward)
    found = batch._cache.get(key)
    if found is None:
        counts = torch.bincount(batch.expanded(int(x3.shape[0])), minlength=len(batch.names))
        first: Adapter = layer.adapters[names[0]]  # type: ignore[assignment]
        engine = layer.engine(layer.weight_for(first, x3), names[0])
        found = layer.split_bank(engine, [int(counts[p]) * tokens for p in positions], backward)
        batch._cache[key] = found
    return bool(found)


def _bank_key(layer: AdapterLinear, name: str) -> tuple[object, ...] | None:
    """What adapters must share to run as one bank; None: run this one on its own."""
    adapter: Adapter = layer.adapters[name]  # type: ignore[assignment]
    if adapter.uses_base_weight:
        return None
    evaluator = layer.evaluator(name)
    own = {id(p) for p in adapter.parameters()}
    ops = adapter.operands(torch.empty(0))
    frozen = tuple(id(op) for op in ops if id(op) not in own)
    shapes = tuple((id(op) in own, tuple(op.shape)) for op in ops)
    net_scale = adapter.network(torch.empty(0)).scale
    dropout = layer.dropouts[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) else 0.0
    return (type(evaluator), frozen, shapes, net_scale, p)


def _bank_operands(
    layer: AdapterLinear, names: list[str], x: torch.Tensor
) -> tuple[list[torch.Tensor], list[bool], Evaluator, nn.Module]:
    """The bank's operands: its adapters' own tensors stacked (cached while unchanged)."""
    adapters: list[Adapter] = [layer.adapters[n] for n in names]  # type: ignore[misc]
    weight = layer.weight_for(adapters[0], x)
    engine = layer.engine(weight, names[0])
    dropout = layer.dropouts[names[0]]
    params = [p for a in adapters for p in a.parameters()]
    grad = needs_backward(params)
    key = ("bank", tuple(names), weight.dtype, weight.device)
    versions = tuple(p._version for p in params)
    cached = None if grad else layer.bank_cache.get(key)
    if cached is not None and cached[0] == versions:
        return cached[1], cached[2], engine.evaluator, dropout
    own = {id(p) for p in adapters[0].parameters()}
    raw0 = adapters[0].operands(weight)
    stacked = [id(op) in own for op in raw0]
    per_adapter = [engine.operands(a.operands(weight)) for a in adapters]
    ops = [
        torch.stack([ops[i] for ops in per_adapter]) if stacked[i] else per_adapter[0][i]
        for i in range(len(raw0))
    ]
    if not grad:
        _remember(layer.bank_cache, "bank", key, (versions, ops, stacked), BANK_CACHE)
    return ops, stacked, engine.evaluator, dropout


def _remember(
    cache: dict[tuple[object, ...], Any],
    kind: str,
    key: tuple[object, ...],
    value: object,
    limit: int,
) -> None:
    """Store ``value``, evicting the oldest entries of ``kind`` beyond ``limit``.

    Safe under concurrent calls from several threads (a missing entry is not an error).
    """
    stale = [k for k in list(cache) if k[0] == kind]
    for old in stale[: max(0, len(stale) - limit + 1)]:
        cache.pop(old, None)
    cache[key] = value
