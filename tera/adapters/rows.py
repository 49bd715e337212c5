"""Adapters stored as rows: many adapters of one bank as rows of one table, not as modules.

An adapter held as a module (``add_adapter``, ``load_adapter``) is an ``nn.Module`` with
its parameters on every layer it adapts: fine for the few adapters a model trains or
runs alone, costly for thousands (each layer of each adapter is a Python object). A
**row adapter** is one row of a table instead: adapters of one **bank** (one kind,
configuration, target layers and frozen factors: ``RowBank.key``) share a
:class:`RowLayout`, which places every tensor an adapter saves (``<layer>.adapter.d.0``,
...) at a fixed offset of a float32 row. A bank's rows live in tables (:class:`RowTable`):
one in memory, grown by doubling, and any number of memory-mapped shards of an
:class:`~tera.adapters.store.AdapterStore`. An extra adapter costs its row (and a name in a
dict), nothing else.

On each adapted layer a bank has one :class:`RowSlot`: a template adapter built once (its
frozen factors are the model's shared ones, its network gives the shapes) and where each of
its own tensors sits in a row. A mixed batch (:mod:`tera.adapters.batch`) gathers the rows
of the batch's adapters once per call (``index_select``: any composition of adapters costs
the same, nothing is restacked or cached per composition) and every layer slices its
tensors out of them for its evaluator's ``push_rows``.

:class:`AdapterRows` is a model's registry of row adapters: which bank holds a name, and
the names refused (with the reason) so that using one raises our error while the others
stay usable.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from tera.adapters import TeRAConfig, adapt
>>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
>>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
>>> for name in ("alice", "bob"):
...     model.add_adapter(name, config)
>>> model.pack_adapters(["alice", "bob"])    # modules -> rows of one bank
>>> model.adapter_names, sorted(model.adapter_rows.names())
(['default'], ['alice', 'bob'])
>>> y = model(torch.randn(2, 16), adapter_names=["bob", "alice"])
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import mmap
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tera.adapters import io, registry
from tera.adapters.base import Adapter
from tera.adapters.config import AdapterConfig
from tera.adapters.engine import LayerEngine
from tera.adapters.factors import SharedFactors
from tera.adapters.layer import AdapterLinear, execution_policy, linear_shape, module_weight
from tera.errors import AdapterStateError, FingerprintError, LoadError

__all__ = [
    "ROW_ALIGN",
    "AdapterRows",
    "RowBank",
    "RowLayout",
    "RowSlot",
    "RowTable",
    "attach_slots",
    "bank_key",
    "row_checksums",
]

ROW_ALIGN = 1024
"""Rows of a mapped shard are padded to a multiple of this many floats (4 KiB pages), so
touching one adapter maps its own pages only."""


def row_checksums(rows: torch.Tensor) -> torch.Tensor:
    """A position-weighted sum of each row's 32-bit words, ``(rows,)`` int64 (wrapping).

    Any change of a single word changes it, and so does swapping two different words;
    integer arithmetic wraps modulo 2**64 in any order, so every platform gets the same.
    Computed with numpy on one thread (called per row while writing a store).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.rows import row_checksums
    >>> rows = torch.ones(2, 3)
    >>> bool(row_checksums(rows)[0] == row_checksums(rows)[1])
    True
    >>> rows[1, 2] = 1.0000001
    >>> bool(row_checksums(rows)[0] == row_checksums(rows)[1])
    False
    """
    words = rows.detach().to("cpu", torch.float32).contiguous().numpy().view(np.uint32)
    weights = _weights(int(words.shape[-1]))
    with np.errstate(over="ignore"):
        return torch.from_numpy((words.astype(np.int64) * weights).sum(axis=-1))


@functools.lru_cache(maxsize=8)
def _weights(width: int) -> np.ndarray:
    return np.arange(1, width + 1, dtype=np.int64)


@dataclass(frozen=True)
class RowLayout:
    """Where each tensor an adapter saves sits in its float32 row.

    Attributes
    ----------
    keys : tuple of str
        The tensors' names as in the adapter's file (``<layer>.adapter.<parameter>``).
    shapes : tuple of tuple of int
        Their shapes.
    offsets : tuple of int
        Their first float in the row.
    width : int
        Floats of one adapter (the row of a mapped shard is padded to :data:`ROW_ALIGN`).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.rows import RowLayout
    >>> layout = RowLayout.of({"a": (2,), "b": (2, 3)})
    >>> layout.width, layout.offsets
    (8, (0, 2))
    >>> row = layout.flatten({"a": torch.ones(2), "b": torch.zeros(2, 3)})
    >>> layout.unflatten(row)["b"].shape
    torch.Size([2, 3])
    """

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    width: int

    @classmethod
    def of(cls, shapes: Mapping[str, Sequence[int]]) -> RowLayout:
        """The layout of tensors of ``shapes``, in the order given."""
        offsets, width = [], 0
        for shape in shapes.values():
            offsets.append(width)
            width += math.prod(shape)
        keys = tuple(shapes)
        return cls(
            keys, tuple(tuple(int(n) for n in s) for s in shapes.values()), tuple(offsets), width
        )

    @property
    def stride(self) -> int:
        """The floats a row takes in a mapped shard (``width`` rounded up to :data:`ROW_ALIGN`)."""
        return -(-self.width // ROW_ALIGN) * ROW_ALIGN

    def to_json(self) -> dict[str, Any]:
        """What the store's index records."""
        return {"keys": list(self.keys), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RowLayout:
        """The inverse of :meth:`to_json`."""
        keys, shapes = data["keys"], data["shapes"]
        if len(keys) != len(shapes):
            raise LoadError(
                f"a row layout names {len(keys)} tensors but gives {len(shapes)} shapes"
            )
        return cls.of({str(k): tuple(int(n) for n in s) for k, s in zip(keys, shapes, strict=True)})

    def flatten(
        self, tensors: Mapping[str, torch.Tensor], where: str = "the adapter"
    ) -> torch.Tensor:
        """The row of ``tensors`` (float32, ``(width,)``), checked against the layout.

        Raises
        ------
        LoadError
            Missing or unexpected tensors, another shape, a dtype float32 cannot hold
            exactly (float64), or NaN/inf values.
        """
        return self.flatten_many({k: v[None] for k, v in tensors.items()}, [where])[0]

    def flatten_many(
        self, tensors: Mapping[str, torch.Tensor], where: Sequence[str]
    ) -> torch.Tensor:
        """The rows of several adapters, ``(len(where), width)``: tensors stacked on axis 0.

        ``where`` names each adapter (in error messages). Raises as :meth:`flatten`, naming
        the adapters whose tensors are not finite.
        """
        n = len(where)
        what = where[0] if n == 1 else f"adapters {list(where[:3])}..."
        missing = sorted(set(self.keys) - set(tensors))
        unexpected = sorted(set(tensors) - set(self.keys))
        if missing or unexpected:
            raise LoadError(
                f"{what} does not fit the bank's layout: missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}; adapters of one bank save the same tensors"
            )
        parts = []
        for key, shape in zip(self.keys, self.shapes, strict=True):
            t = tensors[key]
            if tuple(t.shape) != (n, *shape):
                raise LoadError(
                    f"tensor '{key}' of {what} has shape {tuple(t.shape[1:])}, not {shape}"
                )
            if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise LoadError(
                    f"tensor '{key}' of {what} is {t.dtype}; rows hold float32 (and the "
                    "half types, exactly): convert the adapter to float32 first"
                )
            parts.append(t.detach().to("cpu", torch.float32).reshape(n, -1))
        rows = torch.cat(parts, dim=1) if parts else torch.zeros(n, 0)
        finite = np.isfinite(rows.numpy()).all(axis=1)  # one thread: called while writing
        if not finite.all():
            bad = [w for w, ok in zip(where, finite.tolist(), strict=True) if not ok]
            raise LoadError(f"{', '.join(bad[:3])} hold(s) NaN/inf values; rows must be finite")
        return rows

    def unflatten(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named tensors of a row (views of it)."""
        return {
            key: row[o : o + math.prod(s)].reshape(s)
            for key, s, o in zip(self.keys, self.shapes, self.offsets, strict=True)
        }


class RowTable:
    """A table of adapter rows, ``(capacity, stride)`` float32: in memory or a mapped shard.

    A memory table grows by doubling (:meth:`append`); a shard's table is read-only and
    carries a checksum per row, checked the first time a row is used (:meth:`rows`).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.rows import RowTable
    >>> table = RowTable.memory(3)
    >>> [table.append(torch.full((3,), float(i))) for i in range(5)]
    [0, 1, 2, 3, 4]
    >>> table.capacity, table.rows(torch.tensor([4, 1]))[:, 0].tolist()
    (8, [4.0, 1.0])
    """

    def __init__(
        self,
        table: torch.Tensor,
        count: int,
        source: str,
        checksums: torch.Tensor | None = None,
        keep: mmap.mmap | None = None,
        offset: int = 0,
    ) -> None:
        self.table = table
        self.count = count
        self.source = source
        self.checksums = checksums
        self._verified = torch.zeros(count, dtype=torch.bool) if checksums is not None else None
        self._free: list[int] = []
        self._keep = keep  # the mapping the table's memory belongs to
        self._offset = offset  # of row 0 in the mapping
        self._lock = threading.Lock()

    @classmethod
    def memory(cls, width: int, capacity: int = 0) -> RowTable:
        """An empty table in memory (grown by doubling)."""
        return cls(torch.zeros(capacity, width), 0, "memory")

    @property
    def capacity(self) -> int:
        """Rows the table has room for."""
        return int(self.table.shape[0])

    @property
    def mapped(self) -> bool:
        """Whether the table is a read-only shard of a store."""
        return self.checksums is not None

    def append(self, row: torch.Tensor) -> int:
        """Put ``row`` in a free row (a freed one, else the next; doubling when full)."""
        if self.mapped:
            raise AdapterStateError(f"{self.source} is a store's shard: rows are added in memory")
        with self._lock:
            if self._free:
                index = self._free.pop()
            else:
                if self.count == self.capacity:
                    grown = torch.zeros(max(8, 2 * self.capacity), self.table.shape[1])
                    grown[: self.count] = self.table[: self.count]
                    self.table = grown  # readers holding the old table still see valid rows
                index = self.count
                self.count += 1
            self.table[index, : row.shape[0]] = row
        return index

    def free(self, index: int) -> None:
        """Give a memory row back (a later :meth:`append` reuses it)."""
        if not self.mapped:
            with self._lock:
                self.table[index].zero_()
                self._free.append(index)

    def _prefetch(self, index: torch.Tensor) -> None:
        """Ask the OS to read the mapped rows ``index`` in one go each (a row is contiguous).

        The mapping reads at random (no readahead beyond a fault); without this, a row not
        yet in memory would be read a page per fault.
        """
        size = self.table.shape[1] * 4
        if self._keep is None or (self._offset | size) % mmap.PAGESIZE:
            return
        if not hasattr(mmap, "MADV_WILLNEED"):  # pragma: no cover - no madvise (Windows)
            return
        for row in index.tolist():
            self._keep.madvise(mmap.MADV_WILLNEED, self._offset + row * size, size)

    def rows(self, index: torch.Tensor, names: Sequence[str] = ()) -> torch.Tensor:
        """The rows ``index`` (a copy), checked against their checksums on first use.

        Raises
        ------
        LoadError
            A row whose bytes differ from those written (a corrupted shard), naming it.
        """
        self._prefetch(index)
        out = self.table.index_select(0, index)
        if self._verified is not None and self.checksums is not None:
            fresh = ~self._verified.index_select(0, index)
            if bool(fresh.any()):
                picked = torch.nonzero(fresh).reshape(-1)
                found = row_checksums(out.index_select(0, picked))
                want = self.checksums.index_select(0, index.index_select(0, picked))
                bad = picked[found != want]
                if bad.numel():
                    b = int(bad[0])
                    who = f"adapter {names[b]!r}" if names else f"row {int(index[b])}"
                    raise LoadError(
                        f"{who} in {self.source} is corrupted (its checksum does not match "
                        "the one written with it); add it again from its source folder "
                        "(store.add(name, folder, replace=True)); the other adapters stay usable"
                    )
                self._verified[index.index_select(0, picked)] = True
        return out


def bank_key(meta: Mapping[str, Any]) -> str:
    """The identity of an adapter's bank: kind, configuration, layers and frozen factors.

    Adapters with equal keys have the same saved tensors (names and shapes) and the same
    frozen operands on every layer, so they run as one bank.
    """
    chosen = {k: meta.get(k) for k in ("kind", "config", "targets", "factor_keys")}
    chosen["factor_fingerprint"] = meta.get("factor_fingerprint")
    text = json.dumps(chosen, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class RowSlot:
    """One bank on one layer: its template adapter and where its own tensors sit in a row.

    The template is an adapter of the bank's configuration built on the layer with the
    model's shared factors: it gives the frozen operands (one storage for every adapter of
    the bank, and for the module adapters with the same key) and the network's shapes; its
    own parameters are never used (each row brings its own).
    """

    def __init__(
        self, layer: AdapterLinear, adapter: Adapter, name: str, layout: RowLayout
    ) -> None:
        self.adapter = adapter
        own = {id(p): pname for pname, p in adapter.named_parameters()}
        place = dict(zip(layout.keys, zip(layout.offsets, layout.shapes, strict=True), strict=True))
        ops = adapter.operands(layer.base_weight())
        self.views: tuple[tuple[int, tuple[int, ...]] | None, ...] = tuple(
            place[f"{name}.adapter.{own[id(op)]}"] if id(op) in own else None for op in ops
        )
        self.stacked = tuple(v is not None for v in self.views)
        self.dropout = float(adapter.config.dropout)
        self.evaluator = layer.evaluator_for(adapter)
        self._engines: dict[tuple[torch.dtype, torch.device], LayerEngine] = {}

    def engine(self, w0: torch.Tensor) -> LayerEngine:
        """The bank's engine on this layer for a base weight's dtype and device (cached)."""
        key = (w0.dtype, w0.device)
        found = self._engines.get(key)
        if found is None:
            net = self.adapter.network(w0)
            found = LayerEngine(net, execution_policy(w0), evaluator=self.evaluator)
            self._engines[key] = found
        return found

    def operands(self, w0: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        """The network's operands: frozen ones shared, own ones sliced out of ``rows``.

        ``rows`` is ``(adapters, width)`` (own operands then carry a leading adapter axis,
        as ``push_rows`` takes them) or one adapter's ``(width,)``.
        """
        lead = tuple(rows.shape[:-1])
        out = []
        for op, view in zip(self.adapter.operands(w0), self.views, strict=True):
            if view is None:
                out.append(op)
            else:
                offset, shape = view
                out.append(rows[..., offset : offset + math.prod(shape)].reshape(*lead, *shape))
        return out

    def apply_dropout(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """The bank's input dropout (as a module adapter's ``nn.Dropout``)."""
        return F.dropout(x, self.dropout, training) if self.dropout > 0 and training else x


class RowSource(Protocol):
    """Where a mixed batch gathers the rows of a bank's adapters (a bank, a training group)."""

    key: str

    def gather(self, names: Sequence[str], device: torch.device) -> torch.Tensor:
        """``(len(names), width)``: the rows of ``names``, on ``device``."""
        ...


class ModelLike(Protocol):
    """What :class:`RowBank` needs of a model: its base model and shared factors."""

    base_model: nn.Module

    @property
    def shared_factors(self) -> SharedFactors: ...


class RowBank:
    """Adapters of one bank on one model: their rows (tables), names and layer slots.

    Built by :meth:`AdapterRows.bank_for` (which also builds the slots on the layers).

    Attributes
    ----------
    key : str
        :func:`bank_key` of its adapters.
    meta : dict
        What any of its adapters' ``adapter_config.json`` holds (their names aside).
    config : AdapterConfig
    layout : RowLayout
    tables : list of RowTable
        ``tables[0]`` is the memory table (rows added or checked in); then mapped shards.
    """

    def __init__(self, meta: Mapping[str, Any], layout: RowLayout) -> None:
        self.meta = dict(meta)
        self.key = bank_key(meta)
        self.config: AdapterConfig = registry.config_from_dict(meta["config"])
        self.layout = layout
        self.targets: list[str] = list(meta["targets"])
        self.tables: list[RowTable] = [RowTable.memory(layout.width)]
        self.where: dict[str, int] = {}  # name -> table index << 32 | row

    def __contains__(self, name: object) -> bool:
        return name in self.where

    def __len__(self) -> int:
        return len(self.where)

    def names(self) -> Iterator[str]:
        """The names of the bank's adapters."""
        return iter(self.where)

    def add_table(self, table: RowTable, names: Sequence[str | None]) -> list[str]:
        """Register a mapped table whose row ``i`` is adapter ``names[i]`` (``None``: unused).

        Returns the names added (those the bank held already are left as they were).
        """
        index = len(self.tables)
        self.tables.append(table)
        added = []
        for row, name in enumerate(names):
            if name is not None and name not in self.where:
                self.where[name] = index << 32 | row
                added.append(name)
        return added

    def add(self, name: str, row: torch.Tensor) -> None:
        """Hold ``row`` (``(width,)``, finite float32) as adapter ``name`` (in memory)."""
        if name in self.where:
            raise AdapterStateError(f"the bank already holds an adapter named {name!r}")
        self.where[name] = self.tables[0].append(row.detach().to("cpu", torch.float32))

    def remove(self, name: str) -> None:
        """Forget adapter ``name`` (a memory row is reused; a shard's is left unused)."""
        packed = self.where.pop(name)
        self.tables[packed >> 32].free(packed & 0xFFFFFFFF)

    def gather(self, names: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """``(len(names), width)`` float32: the rows of ``names`` (one ``index_select`` per table).

        Raises
        ------
        LoadError
            A row of a mapped shard whose checksum does not match (a corrupted shard).
        """
        width = self.layout.width
        by_table: dict[int, tuple[list[int], list[int]]] = {}
        for i, name in enumerate(names):
            packed = self.where[name]
            entry = by_table.setdefault(packed >> 32, ([], []))
            entry[0].append(i)
            entry[1].append(packed & 0xFFFFFFFF)
        if len(by_table) == 1:
            t, (_, rows) = next(iter(by_table.items()))
            out = self.tables[t].rows(torch.tensor(rows), names)[:, :width]
        else:
            out = torch.empty(len(names), width)
            for t, (positions, rows) in by_table.items():
                picked = [names[p] for p in positions]
                got = self.tables[t].rows(torch.tensor(rows), picked)[:, :width]
                out[torch.tensor(positions)] = got
        return out if device is None else out.to(device, non_blocking=False)

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of adapter ``name`` as its file names them (copies, CPU)."""
        return {k: v.clone() for k, v in self.layout.unflatten(self.gather([name])[0]).items()}

    def adapter_meta(self) -> dict[str, Any]:
        """The ``adapter_config.json`` of any adapter of the bank (as ``save_pretrained``'s)."""
        from tera import __version__

        meta = dict(self.meta)
        meta.update(library="tera", library_version=__version__, includes_factors=False)
        meta["modules_to_save"] = []
        return meta

    def folder(self, name: str) -> io.Folder:
        """Adapter ``name`` as the files of an adapter folder (what ``load_adapter`` reads)."""
        return io.tera_folder(self.adapter_meta(), self.state(name))


class AdapterRows:
    """A model's row adapters: its banks, which bank holds each name, the names refused.

    Examples
    --------
    >>> from tera.adapters.rows import AdapterRows
    >>> rows = AdapterRows()
    >>> len(rows), "alice" in rows
    (0, False)
    """

    def __init__(self) -> None:
        self.banks: dict[str, RowBank] = {}
        self.groups: dict[str, RowSource] = {}  # names checked out into a training group
        self.refused: dict[str, str] = {}  # name -> why it cannot be used

    def __contains__(self, name: object) -> bool:
        return name in self.groups or any(name in bank for bank in self.banks.values())

    def __len__(self) -> int:
        return len(self.groups) + sum(len(bank) for bank in self.banks.values())

    def names(self) -> Iterator[str]:
        """Every row adapter's name (bank by bank, then those checked out for training)."""
        for bank in self.banks.values():
            yield from bank.names()
        yield from self.groups

    def bank(self, name: str) -> RowBank:
        """The bank holding ``name`` (not checked out).

        Raises
        ------
        LoadError
            ``name`` was refused (a corrupted shard, a bank that does not fit the model).
        AdapterStateError
            No row adapter has that name, or it is checked out for training.
        """
        for bank in self.banks.values():
            if name in bank:
                return bank
        self.check(name)
        if name in self.groups:
            raise AdapterStateError(
                f"adapter {name!r} is checked out for training; check_in() its group first"
            )
        raise AdapterStateError(f"this model holds no row adapter named {name!r}")

    def source(self, name: str) -> RowSource:
        """Where the rows of ``name`` are gathered from: its bank, or its training group."""
        group = self.groups.get(name)
        return group if group is not None else self.bank(name)

    def check(self, name: str) -> None:
        """Raise the reason ``name`` was refused, if it was (:class:`~tera.errors.LoadError`)."""
        reason = self.refused.get(name)
        if reason is not None:
            raise LoadError(f"adapter {name!r} cannot be used: {reason}")

    def clear(self) -> None:
        """Forget every row adapter (the model's layers were unwrapped)."""
        self.banks.clear()
        self.groups.clear()
        self.refused.clear()

    def bank_for(
        self, model: ModelLike, meta: Mapping[str, Any], layout: RowLayout
    ) -> tuple[RowBank, list[str]]:
        """The model's bank for adapters saved with ``meta`` (built, with its slots, if new).

        Returns the bank and the names of the layers newly wrapped for it.

        Raises
        ------
        LoadError
            The adapters adapt layers the model lacks, or of other shapes, or their layout
            does not fit their configuration on this model.
        FingerprintError
            The model's frozen factors differ from those the adapters were trained with.
        """
        key = bank_key(meta)
        found = self.banks.get(key)
        if found is not None:
            if found.layout != layout:
                raise LoadError("adapters of one bank come with two different row layouts")
            return found, []
        bank = RowBank(meta, layout)
        wrapped = attach_slots(model, bank)
        self.banks[key] = bank
        return bank, wrapped


def attach_slots(model: ModelLike, bank: RowBank) -> list[str]:
    """Build ``bank``'s slot on every layer it adapts (wrapping plain layers), or nothing.

    A target that is not yet an :class:`~tera.adapters.AdapterLinear` is wrapped as one
    without module adapters (their names are returned). The templates' frozen factors are
    checked against the bank's fingerprint, and their own tensors against the bank's row layout.
    """
    cls = registry.adapter_class(bank.config)
    shared = model.shared_factors
    built: list[tuple[str, AdapterLinear, bool]] = []
    keys: set[str] = set()
    used = 0
    try:
        for lname, shape in bank.meta["targets"].items():
            try:
                module = model.base_model.get_submodule(lname)
            except AttributeError:
                raise LoadError(
                    f"the bank's adapters adapt '{lname}', which this model does not have"
                ) from None
            base = module.base_layer if isinstance(module, AdapterLinear) else module
            in_f, out_f = linear_shape(base, lname)
            if (in_f, out_f) != (shape["in_features"], shape["out_features"]):
                raise LoadError(
                    f"layer '{lname}' is {in_f} -> {out_f} in this model but "
                    f"{shape['in_features']} -> {shape['out_features']} for the bank's adapters"
                )
            template = cls(bank.config, in_f, out_f, shared, lname, module_weight(base).device)
            keys.update(template.factor_keys)
            wrapped = not isinstance(module, AdapterLinear)
            layer = (
                module if isinstance(module, AdapterLinear) else _wrap(model, lname, module, shared)
            )
            built.append((lname, layer, wrapped))
            try:
                slot = RowSlot(layer, template, lname, bank.layout)
            except KeyError as err:
                raise LoadError(
                    f"the bank's row layout lacks {err} for layer '{lname}'; the adapters "
                    "were saved by another configuration"
                ) from None
            layer.row_slots[bank.key] = slot
            used += sum(slot.stacked)
        if used != len(bank.layout.keys):
            raise LoadError(
                f"the bank's row layout holds {len(bank.layout.keys)} tensors but its "
                f"configuration has {used} on these layers; the adapters were saved by "
                "another configuration"
            )
        if sorted(keys) != sorted(bank.meta.get("factor_keys", [])):
            raise FingerprintError(
                f"this tera builds the factors {sorted(keys)[:3]}... for the bank's adapters but "
                f"they were saved with {sorted(bank.meta.get('factor_keys', []))[:3]}...; the "
                "factor scheme changed between versions"
            )
        if shared.fingerprint(keys) != bank.meta.get("factor_fingerprint"):
            raise FingerprintError(
                "the frozen factors regenerated from the bank's seed do not match the "
                "fingerprint saved with its adapters: they would give a different model"
            )
    except Exception:
        for lname, layer, wrapped in built:
            layer.row_slots.pop(bank.key, None)
            if wrapped and not layer.row_slots:
                _set_submodule(model.base_model, lname, layer.base_layer)
        raise
    return [lname for lname, _, wrapped in built if wrapped]


def _wrap(model: ModelLike, name: str, module: nn.Module, shared: SharedFactors) -> AdapterLinear:
    module.requires_grad_(False)
    layer = AdapterLinear(module, None, shared=shared)
    _set_submodule(model.base_model, name, layer)
    return layer


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
