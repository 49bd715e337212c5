"""Many adapters on one model: row adapters, stores and training groups, as model methods.

:class:`ManyAdapters` is the part of :class:`~tera.adapters.AdaptedModel` that holds
adapters as rows (:mod:`tera.adapters.rows`) rather than modules: opening a store
(``AdaptedModel.load_adapters``), turning module adapters into rows and back
(``AdaptedModel.pack_adapters``, ``AdaptedModel.unpack_adapters``) and checking a
group out for training (``AdaptedModel.train_adapters``). Module adapters keep PEFT's
API unchanged; a row adapter works wherever an adapter name is given per row
(``adapter_names=[...]``), and ``set_adapter``, ``delete_adapter``, ``adapter_bytes`` and
``save_pretrained(selected_adapters=...)`` accept one too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from tera.adapters import io, saving
from tera.adapters.config import AdapterConfig
from tera.adapters.factors import SharedFactors
from tera.adapters.groups import RowGroup
from tera.adapters.layer import AdapterLinear, module_weight
from tera.adapters.rows import AdapterRows, RowLayout
from tera.adapters.store import AdapterStore, StoreWarning
from tera.errors import AdapterStateError, FingerprintError, FormatError, LoadError, TargetError

__all__ = ["AdapterRows", "ManyAdapters"]


if TYPE_CHECKING:

    class _Host(Protocol):
        """What the methods below need of the model (an ``AdaptedModel``)."""

        base_model: nn.Module
        modules_to_save: list[str]
        _configs: dict[str, AdapterConfig]
        _layer_names: list[str]
        _rows: AdapterRows

        @property
        def adapter_layers(self) -> dict[str, AdapterLinear]: ...
        @property
        def shared_factors(self) -> SharedFactors: ...
        @property
        def peft_config(self) -> dict[str, AdapterConfig]: ...
        @property
        def active_adapter(self) -> str: ...
        def adapter_parameters(
            self, adapter_name: str | None = None
        ) -> Iterator[tuple[str, nn.Parameter]]: ...
        def add_adapter(
            self, adapter_name: str, config: AdapterConfig, *, targets: Sequence[str] | None = None
        ) -> None: ...
        def delete_adapter(self, adapter_name: str) -> None: ...
        def unpack_adapters(self, names: Iterable[str]) -> None: ...


class ManyAdapters:
    """Row adapters on a model (mixed into :class:`~tera.adapters.AdaptedModel`)."""

    # -- the hooks of AdaptedModel's own methods for names held as rows ------------------
    def _unpack_row(self: _Host, name: str) -> None:
        """``set_adapter``: a row adapter becomes a module first."""
        if _is_row(self, name):
            self.unpack_adapters([name])

    def _drop_row(self: _Host, name: str) -> bool:
        """``delete_adapter``: drop a row adapter's row (False: not a row adapter)."""
        if not _is_row(self, name):
            return False
        self._rows.bank(name).remove(name)
        return True

    def _own_bytes(self: _Host, name: str | None) -> int:
        """``adapter_bytes``: a module adapter's parameters, or a row adapter's row."""
        if name is not None and _is_row(self, name):
            return 4 * self._rows.bank(name).layout.width  # float32 rows
        return sum(p.numel() * p.element_size() for _, p in self.adapter_parameters(name))

    def _row_folders(
        self: _Host, names: Sequence[str], format: str
    ) -> tuple[dict[str, io.Folder], list[str]]:
        """``save_pretrained``: the row adapters' files and the module adapters' names.

        The files (sub-folder -> files) are written in the same atomic save as the module
        adapters: a kill leaves all of them old or all new.
        """
        rows = [n for n in names if _is_row(self, n)]
        if rows and format != "tera":
            raise FormatError(
                f"row adapters {rows[:3]} are written in tera's format; unpack_adapters() "
                f"them to write format={format!r}"
            )
        folders = {io.adapter_folder(n): self._rows.bank(n).folder(n) for n in rows}
        return folders, [n for n in names if n not in rows]

    @property
    def adapter_rows(self: _Host) -> AdapterRows:
        """The adapters held as rows: ``len``, ``in``, ``names()``, ``refused`` (name -> why)."""
        return self._rows

    def load_adapters(self: _Host, store: str | os.PathLike[str] | AdapterStore) -> list[str]:
        """Make every adapter of a store usable by name, memory-mapped (none is read).

        Each of the store's banks gets a slot on the layers it adapts (its frozen factors
        are the model's, checked against the bank's fingerprint); its adapters become row
        adapters: any of them may be named per row of a mixed batch (``adapter_names=``),
        and their rows are read (and checked) when first used. Names the model already
        holds keep their adapter. What cannot be used (a corrupted shard, a bank whose
        layers this model lacks) is refused with a :class:`~tera.adapters.store.StoreWarning`
        and listed in ``adapter_rows.refused``: naming such an adapter raises
        :class:`~tera.errors.LoadError` with the reason; the rest stays usable.

        Parameters
        ----------
        store : str, Path or AdapterStore
            A store's folder (opened with :meth:`AdapterStore.open
            <tera.adapters.store.AdapterStore.open>`) or an open store.

        Returns
        -------
        list of str
            The names added.

        Examples
        --------
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> from tera.adapters.store import AdapterStore
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(f"{d}/a")
        ...     with AdapterStore.create(f"{d}/store") as store:
        ...         for user in ("u1", "u2", "u3"):
        ...             store.add(user, f"{d}/a")
        ...     model.load_adapters(f"{d}/store")
        ['u1', 'u2', 'u3']
        """
        opened = store if isinstance(store, AdapterStore) else AdapterStore.open(store)
        rows = self._rows
        added: list[str] = []
        problems: dict[str, str] = {}
        for bid, kept in opened.banks.items():
            try:
                bank, wrapped = rows.bank_for(self, kept.meta, kept.layout)
            except (LoadError, FingerprintError, TargetError) as err:
                problems[f"bank {bid}"] = str(err)
                for _, names in opened.tables(bid):
                    rows.refused.update({n: str(err) for n in names if n is not None})
                continue
            self._layer_names.extend(wrapped)
            loaded = {table.source for table in bank.tables}
            for table, names in opened.tables(bid):
                if table.source not in loaded:
                    free = [n if n not in self._configs and n not in rows else None for n in names]
                    added += bank.add_table(table, free)
        for name, reason in opened.refused.items():
            if name not in rows and name not in self._configs:
                rows.refused[name] = reason
        if problems:
            shown = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:3])
            warnings.warn(
                f"{len(problems)} bank(s) of {opened.path} do not fit this model: {shown}",
                StoreWarning,
                stacklevel=2,
            )
        return added

    def pack_adapters(self: _Host, names: Iterable[str]) -> None:
        """Hold module adapters as rows instead (their modules are removed).

        A row costs the adapter's tensors only (no module, no parameters per layer) and
        serves mixed batches like a store's rows; :meth:`unpack_adapters` (or
        ``set_adapter``) makes it a module again, unchanged.

        Raises
        ------
        AdapterStateError
            A name that is no module adapter, the active adapter (``set_adapter`` another
            first), a merged model, a model with ``modules_to_save`` (rows hold adapters
            only), or frozen factors replaced since they were generated.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import LoRAConfig, adapt
        >>> config = LoRAConfig(r=2, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), config)
        >>> model.add_adapter("bob", config)
        >>> model.pack_adapters(["bob"])
        >>> model.adapter_names, list(model.adapter_rows.names())
        (['default'], ['bob'])
        """
        chosen = list(dict.fromkeys(names))
        for name in chosen:
            if name not in self._configs:
                raise AdapterStateError(f"this model holds no module adapter named {name!r}")
            if name == self.active_adapter:
                raise AdapterStateError(
                    f"{name!r} is the active adapter; set_adapter() another one before packing it"
                )
        if self.modules_to_save:
            raise AdapterStateError(
                f"this model has modules_to_save {self.modules_to_save}; rows hold adapters only"
            )
        if any(layer.merged for layer in self.adapter_layers.values()):
            raise AdapterStateError("the model is merged; unmerge() before packing adapters")
        for name in chosen:
            if self.shared_factors.replaced(saving.factor_keys(self, name)):
                raise AdapterStateError(
                    f"adapter {name!r} uses frozen factors replaced since they were generated "
                    "(a PEFT VeRA's projections); rows need factors regenerated from the seed"
                )
            meta = saving.adapter_meta(self, False, name)
            tensors = saving.adapter_state(self, False, name)
            layout = RowLayout.of({k: tuple(tensors[k].shape) for k in sorted(tensors)})
            bank, wrapped = self._rows.bank_for(self, meta, layout)
            self._layer_names.extend(wrapped)
            bank.add(name, layout.flatten(tensors, f"adapter {name!r}"))
            try:
                self.delete_adapter(name)
            except Exception:
                bank.remove(name)
                raise

    def unpack_adapters(self: _Host, names: Iterable[str]) -> None:
        """Make row adapters modules again (trainable, mergeable, ``set_adapter``-able).

        ``set_adapter`` does this for the adapter it is given.

        Raises
        ------
        AdapterStateError
            A name that is no row adapter, or one checked out for training.
        LoadError
            A refused adapter, or a corrupted row.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import LoRAConfig, adapt
        >>> config = LoRAConfig(r=2, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), config)
        >>> model.add_adapter("bob", config)
        >>> model.pack_adapters(["bob"]); model.unpack_adapters(["bob"])
        >>> model.adapter_names
        ['default', 'bob']
        """
        for name in list(dict.fromkeys(names)):
            bank = self._rows.bank(name)
            row = bank.gather([name])[0]
            bank.remove(name)
            try:
                self.add_adapter(name, bank.config, targets=bank.targets)
                state = bank.layout.unflatten(row)
                with torch.no_grad():
                    for key, p in self.adapter_parameters(name):
                        p.copy_(state[key].to(p.device, p.dtype))
            except Exception:
                if name in self._configs:
                    self.delete_adapter(name)
                bank.add(name, row)
                raise

    def train_adapters(
        self: _Host, names: Iterable[str], device: str | torch.device | None = None
    ) -> RowGroup:
        """Check row adapters of one bank out into a trainable :class:`RowGroup`.

        The group holds one parameter, the adapters' rows; a mixed batch naming them
        trains all of them in one step, and its :meth:`RowGroup.optimizer
        <tera.adapters.groups.RowGroup.optimizer>` (:class:`~tera.adapters.groups.RowAdamW`)
        moves only the adapters the batch used. No gradient or optimizer state exists for
        any other adapter. ``group.check_in()`` (or the end of a ``with`` block) puts the
        rows back.

        Parameters
        ----------
        names : iterable of str
            Row adapters of one bank (``pack_adapters`` makes module adapters rows).
        device : str or torch.device, optional
            Where the group's parameter lives (default: the adapted layers' device).

        Raises
        ------
        AdapterStateError
            A name that is no row adapter (or already checked out), or names of several
            banks.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> for name in ("a", "b"):
        ...     model.add_adapter(name, config)
        >>> model.pack_adapters(["a", "b"])
        >>> with model.train_adapters(["a", "b"]) as group:
        ...     opt = group.optimizer(lr=1e-2)
        ...     loss = model(torch.randn(4, 16), adapter_names=["a", "b", "b", "a"]).sum()
        ...     loss.backward(); opt.step(); opt.zero_grad()
        >>> tuple(group.weight.shape)   # 2 adapters, their 16 floats each
        (2, 16)
        """
        chosen = list(dict.fromkeys(names))
        if not chosen:
            raise AdapterStateError("train_adapters needs at least one adapter name")
        banks = {id(b): b for b in (self._rows.bank(n) for n in chosen)}
        if len(banks) != 1:
            raise AdapterStateError(
                f"{chosen[:4]}... belong to {len(banks)} banks (other kinds, configurations "
                "or layers); a group trains adapters of one bank"
            )
        bank = next(iter(banks.values()))
        if device is None:
            layer = next(iter(self.adapter_layers.values()))
            device = module_weight(layer.base_layer).device
        group = RowGroup(self._rows, bank, chosen, torch.device(device))
        for name in chosen:
            bank.remove(name)
            self._rows.groups[name] = group
        return group


def _is_row(model: _Host, name: object) -> bool:
    return isinstance(name, str) and name not in model._configs and name in model._rows
