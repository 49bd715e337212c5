"""Many adapters on disk: sharded safetensors files of rows and one index, memory-mapped.

An :class:`AdapterStore` is a folder::

    tera_store.json               the index: banks (meta, row layout) and shards (names)
    shard-<bank>-<id>.safetensors  rows (float32, (n, stride)) and their checksums (int64, (n,))

Adapters of one bank (:func:`tera.adapters.rows.bank_key`: kind, configuration, layers,
frozen factors) share a row layout; the configuration and the frozen factors' fingerprint
are written once per bank, a name once per adapter. Shards are ordinary safetensors files
(``safetensors.safe_open`` reads them) whose rows start on 4 KiB pages, so opening a store
maps them (``mmap``, no read) and a model touches only the pages of the adapters it runs:
:meth:`~tera.adapters.AdaptedModel.load_adapters` makes every adapter of a store usable in
a mixed batch in the time it takes to read the index.

Writing: :meth:`AdapterStore.add` takes one adapter folder (what ``save_pretrained``
writes) at a time, :meth:`AdapterStore.add_tensors` its meta and tensors; rows are
buffered and written as a shard every ``shard_rows`` adapters and on :meth:`flush` (and at
the end of a ``with`` block). A shard is written in full under a temporary name, synced,
renamed, and only then named in the index (itself replaced atomically), under a lock
file: a writer killed midway leaves the store as it was (its leftovers are swept by the
next writer). :meth:`AdapterStore.export` writes one adapter back as a folder.

Reading never trusts the bytes: a shard whose header, size or layout does not fit the
index is refused at open, an index that names rows a shard does not have refuses those
names, and every row is checked against its checksum the first time it is used (a
corrupted row raises :class:`~tera.errors.LoadError` naming the adapter). What is refused
is listed in :attr:`AdapterStore.problems` and :attr:`AdapterStore.refused` (with a
:class:`StoreWarning` at open); everything else stays usable.

Examples
--------
>>> import tempfile, torch
>>> from torch import nn
>>> from tera.adapters import TeRAConfig, adapt
>>> from tera.adapters.store import AdapterStore
>>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
>>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
>>> with tempfile.TemporaryDirectory() as d:
...     model.save_pretrained(f"{d}/alice")
...     with AdapterStore.create(f"{d}/store") as store:
...         store.add("alice", f"{d}/alice")
...     _ = model.load_adapters(f"{d}/store")
...     y = model(torch.randn(2, 16), adapter_names=["alice", "default"])
>>> sorted(model.adapter_rows.names())
['alice']
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tera.adapters import io, registry
from tera.adapters.rows import RowLayout, RowTable, bank_key, row_checksums
from tera.errors import AdapterStateError, ConfigError, LoadError

try:  # POSIX: one writer at a time (elsewhere the caller must ensure it)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "SHARD_ROWS",
    "AdapterStore",
    "StoreBank",
    "StoreWarning",
]

INDEX_NAME = "tera_store.json"
FORMAT = "tera-adapter-store"
FORMAT_VERSION = 1
SHARD_ROWS = 4096
"""Adapters per shard written (a TeRA adapter of SmolLM2-135M: 4096 rows, ~600 MB)."""
_PAGE = 4096
_BLOCK = 256  # rows written (and checksummed) at a time
_MAX_HEADER = 1 << 20


class StoreWarning(UserWarning):
    """Parts of an adapter store could not be opened; the rest is usable."""


@dataclass
class StoreBank:
    """A bank as the store records it: its adapters' meta (once) and row layout."""

    id: str
    meta: dict[str, Any]
    layout: RowLayout


@dataclass
class _Shard:
    file: str
    bank: str
    names: list[str | None]
    table: RowTable | None = None
    problem: str | None = None


@dataclass
class _Pending:
    rows: list[tuple[str, torch.Tensor]] = field(default_factory=list)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or "." in name or name == "__base__":
        raise AdapterStateError(
            f"an adapter name must be a non-empty string without dots, other than "
            f"'__base__'; got {name!r}"
        )
    return name


class AdapterStore:
    """Many adapters in one folder: sharded rows, an index, memory-mapped when opened.

    Use :meth:`create` (a new store) or :meth:`open` (an existing one), not the
    constructor.

    Attributes
    ----------
    path : Path
        The store's folder.
    shard_rows : int
        Adapters per shard written.
    banks : dict
        ``id -> StoreBank``.
    problems : dict
        ``shard file or bank id -> why it cannot be used`` (found at open).
    refused : dict
        ``adapter name -> why it cannot be used`` (those of the problems above, and names
        the index gives rows that do not exist).
    """

    def __init__(self, path: Path, shard_rows: int = SHARD_ROWS) -> None:
        if shard_rows < 1:
            raise ConfigError(f"shard_rows must be at least 1, got {shard_rows}")
        self.path = path
        self.shard_rows = shard_rows
        self.banks: dict[str, StoreBank] = {}
        self.problems: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self._shards: list[_Shard] = []
        self._where: dict[str, tuple[int, int]] | None = None
        self._pending: dict[str, _Pending] = {}
        self._pending_names: dict[str, bool] = {}  # name -> replace

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], shard_rows: int = SHARD_ROWS) -> AdapterStore:
        """A new, empty store in ``path`` (created; an existing store there is refused).

        Raises
        ------
        AdapterStateError
            ``path`` already holds a store.
        """
        folder = Path(path)
        if (folder / INDEX_NAME).exists():
            raise AdapterStateError(f"{folder} already holds an adapter store; open() it instead")
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder, shard_rows)
        with store._locked():
            _write_json(folder / INDEX_NAME, store._index_json())
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], shard_rows: int = SHARD_ROWS) -> AdapterStore:
        """Open the store in ``path``: read its index and map its shards (no row is read).

        Shards or banks that cannot be used are listed in :attr:`problems` (their
        adapters in :attr:`refused`) with a :class:`StoreWarning`; the rest is usable.

        Raises
        ------
        LoadError
            No store in ``path``, or an index that cannot be read at all.
        """
        folder = Path(path)
        store = cls(folder, shard_rows)
        store._read(_read_index(folder))
        if store.problems:
            shown = "; ".join(f"{k}: {v}" for k, v in list(store.problems.items())[:3])
            warnings.warn(
                f"{len(store.problems)} part(s) of the adapter store {folder} cannot be used "
                f"({len(store.refused)} adapter(s) refused): {shown}",
                StoreWarning,
                stacklevel=2,
            )
        return store

    def _read(self, index: Mapping[str, Any]) -> None:
        """Take the banks and shards of ``index``, mapping every shard (after a write too)."""
        self.banks, self.problems, self.refused, self._where = {}, {}, {}, None
        for bid, entry in index.get("banks", {}).items():
            try:
                meta = dict(entry["meta"])
                registry.config_from_dict(meta["config"])
                self.banks[bid] = StoreBank(bid, meta, RowLayout.from_json(entry["layout"]))
            except (LoadError, KeyError, TypeError, ValueError) as err:
                self.problems[f"bank {bid}"] = f"its record in the index is invalid ({err})"
        old = {s.file: s for s in self._shards}
        self._shards = []
        for entry in index.get("shards", []):
            shard = _Shard(str(entry["file"]), str(entry["bank"]), list(entry["names"]))
            self._shards.append(shard)
            bank = self.banks.get(shard.bank)
            previous = old.get(shard.file)
            if bank is None:
                why = self.problems.get(f"bank {shard.bank}", "the index does not record it")
                shard.problem = f"its bank {shard.bank} is not usable: {why}"
            elif previous is not None and previous.table is not None:
                shard.table = previous.table  # unchanged file: keep its mapping
            else:
                try:
                    shard.table = _map_shard(self.path / shard.file, bank.layout.stride)
                except LoadError as err:
                    shard.problem = str(err)
            if shard.problem is not None:
                self.problems[shard.file] = shard.problem
                for name in shard.names:
                    if name is not None:
                        self.refused[name] = f"{shard.file}: {shard.problem}"
            elif shard.table is not None and len(shard.names) > shard.table.count:
                for row, name in enumerate(shard.names[shard.table.count :], shard.table.count):
                    if name is not None:
                        self.refused[name] = (
                            f"the index names row {row} of {shard.file}, which holds only "
                            f"{shard.table.count} rows"
                        )
                self.problems[shard.file] = (
                    f"the index names {len(shard.names)} rows but the shard holds "
                    f"{shard.table.count}"
                )
        seen: dict[str, int] = {}
        for shard in self._shards:
            for name in shard.names:
                if name is not None:
                    seen[name] = seen.get(name, 0) + 1
        for name, count in seen.items():
            if count > 1:
                self.refused[name] = f"the index names it {count} times (the index is corrupted)"

    # -- what it holds ----------------------------------------------------------------------
    def _locations(self) -> dict[str, tuple[int, int]]:
        found = self._where
        if found is None:
            found = {}
            for s, shard in enumerate(self._shards):
                if shard.table is None:
                    continue
                for row, name in enumerate(shard.names[: shard.table.count]):
                    if name is not None and name not in self.refused:
                        found[name] = (s, row)
            self._where = found
        return found

    def names(self) -> Iterator[str]:
        """The names of the usable adapters (written ones; buffered ones after :meth:`flush`)."""
        return iter(self._locations())

    def __len__(self) -> int:
        return len(self._locations())

    def __contains__(self, name: object) -> bool:
        return name in self._locations()

    def tables(self, bank_id: str) -> Iterator[tuple[RowTable, list[str | None]]]:
        """The mapped tables of a bank, each with the name of every row (``None``: unused).

        Refused names are ``None`` here.
        """
        for shard in self._shards:
            if shard.bank == bank_id and shard.table is not None:
                names = shard.names[: shard.table.count]
                yield shard.table, [None if n in self.refused else n for n in names]

    def tensors(self, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(meta, tensors)`` of adapter ``name``: its ``adapter_config.json`` and file.

        Raises
        ------
        LoadError
            ``name`` was refused, or its row is corrupted.
        AdapterStateError
            The store holds no adapter ``name``.
        """
        where = self._locations().get(name)
        if where is None:
            if name in self.refused:
                raise LoadError(f"adapter {name!r} cannot be used: {self.refused[name]}")
            raise AdapterStateError(f"the store {self.path} holds no adapter named {name!r}")
        shard = self._shards[where[0]]
        assert shard.table is not None
        bank = self.banks[shard.bank]
        row = shard.table.rows(torch.tensor([where[1]]), [name])[0, : bank.layout.width]
        tensors = {k: v.clone() for k, v in bank.layout.unflatten(row).items()}
        from tera import __version__

        meta = dict(bank.meta)
        meta.update(library="tera", library_version=__version__, includes_factors=False)
        return meta, tensors

    def export(self, name: str, directory: str | os.PathLike[str]) -> None:
        """Write adapter ``name`` as an adapter folder (``load_adapter`` / ``from_pretrained``).

        Examples
        --------
        >>> import tempfile, os, torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> from tera.adapters.store import AdapterStore
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)),
        ...               TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(f"{d}/a")
        ...     with AdapterStore.create(f"{d}/s") as store:
        ...         store.add("a", f"{d}/a")
        ...     store.export("a", f"{d}/back")
        ...     sorted(os.listdir(f"{d}/back"))
        ['adapter_config.json', 'adapter_model.safetensors']
        """
        meta, tensors = self.tensors(name)
        io.write_adapter(Path(directory), meta, tensors)

    # -- writing ----------------------------------------------------------------------------
    def add(self, name: str, directory: str | os.PathLike[str], replace: bool = False) -> None:
        """Add the adapter folder ``directory`` (tera's format) as adapter ``name``.

        Buffered: written as a shard every :attr:`shard_rows` adapters, by :meth:`flush`,
        and at the end of a ``with`` block. ``replace`` lets ``name`` replace an adapter
        of that name (its old row is left unused).

        Raises
        ------
        LoadError
            The folder cannot be read, holds ``modules_to_save`` (a store holds adapters
            only), or non-finite tensors.
        AdapterStateError
            The store already holds ``name`` (and ``replace`` is false), or a bad name.
        """
        folder = Path(directory)
        self.add_tensors(name, io.read_meta(folder), io.read_tensors(folder), replace)

    def add_tensors(
        self,
        name: str,
        meta: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        replace: bool = False,
    ) -> None:
        """Add one adapter from its meta (``adapter_config.json``) and tensors (as :meth:`add`)."""
        self.add_many([name], meta, {k: v[None] for k, v in tensors.items()}, replace)

    def add_many(
        self,
        names: Sequence[str],
        meta: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        replace: bool = False,
    ) -> None:
        """Add adapters of one meta at once: ``tensors[k][i]`` is adapter ``names[i]``'s.

        What a bulk writer (a conversion, a benchmark) uses: the checks of :meth:`add`,
        made once for all of them. Nothing is added if any adapter is refused.
        """
        for name in names:
            _check_name(name)
        held = [n for n in names if n in self._pending_names or n in self._locations()]
        if held and not replace:
            raise AdapterStateError(
                f"the store already holds an adapter named {held[0]!r} (and {len(held) - 1} "
                "more); pass replace=True to replace them"
            )
        waiting = [n for n in names if n in self._pending_names]
        if waiting or len(set(names)) != len(names):
            raise AdapterStateError(
                f"adapters {waiting[:3] or list(names[:3])} are already waiting to be written"
            )
        if meta.get("modules_to_save"):
            raise LoadError(
                f"adapters {list(names[:3])} come with modules_to_save "
                f"{meta['modules_to_save']}; a store holds adapters only (save them without)"
            )
        for required in ("kind", "config", "targets", "factor_keys", "factor_fingerprint"):
            if required not in meta:
                raise LoadError(f"the meta of adapters {list(names[:3])} lacks {required!r}")
        registry.config_from_dict(meta["config"])
        own = {k: v for k, v in tensors.items() if not k.startswith(io.FACTOR_PREFIX)}
        bid = bank_key(meta)
        bank = self.banks.get(bid)
        if bank is None:
            layout = RowLayout.of({k: tuple(own[k].shape[1:]) for k in sorted(own)})
            kept = {k: meta[k] for k in ("kind", "config", "seed", "targets") if k in meta}
            kept.update(
                factor_keys=list(meta["factor_keys"]),
                factor_fingerprint=meta["factor_fingerprint"],
                modules_to_save=[],
            )
            bank = StoreBank(bid, kept, layout)
        rows = bank.layout.flatten_many(own, [f"adapter {n!r}" for n in names])
        self.banks[bid] = bank
        pending = self._pending.setdefault(bid, _Pending()).rows
        pending.extend(zip(names, rows, strict=True))
        self._pending_names.update(dict.fromkeys(names, replace))
        if len(pending) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered adapters: new shards, then the index (atomically, locked)."""
        if not self._pending_names:
            return
        with self._locked():
            index = _read_index(self.path)
            _sweep(self.path, index)
            names_now = {
                n: (i, r)
                for i, entry in enumerate(index["shards"])
                for r, n in enumerate(entry["names"])
                if n is not None
            }
            for name, replace in self._pending_names.items():
                if name in names_now and not replace:
                    raise AdapterStateError(
                        f"the store already holds an adapter named {name!r} (added by another "
                        "writer); pass replace=True to replace it"
                    )
            for name in self._pending_names:
                if name in names_now:
                    i, r = names_now[name]
                    index["shards"][i]["names"][r] = None
            for bid, pending in self._pending.items():
                bank = self.banks[bid]
                index["banks"].setdefault(bid, {"meta": bank.meta, "layout": bank.layout.to_json()})
                for start in range(0, len(pending.rows), self.shard_rows):
                    chunk = pending.rows[start : start + self.shard_rows]
                    file = f"shard-{bid[:8]}-{uuid.uuid4().hex[:12]}.safetensors"
                    _write_shard(self.path / file, bid, [r for _, r in chunk], bank.layout.stride)
                    index["shards"].append(
                        {"file": file, "bank": bid, "names": [n for n, _ in chunk]}
                    )
            _write_json(self.path / INDEX_NAME, index)
            self._pending, self._pending_names = {}, {}
            self._read(index)

    def close(self) -> None:
        """Write what is buffered (:meth:`flush`)."""
        self.flush()

    def __enter__(self) -> AdapterStore:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.flush()

    def _index_json(self) -> dict[str, Any]:
        from tera import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "banks": {},
            "shards": [],
        }

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (a lock file; ``flock`` where the OS has it)."""
        with open(self.path / ".lock", "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.path)!r}, {len(self)} adapters, {len(self.banks)} bank(s))"


def _read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_NAME
    if not path.is_file():
        raise LoadError(f"no {INDEX_NAME} in {folder}; is this a folder written by AdapterStore?")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError(f"{path} is not valid JSON ({err}); the index is corrupted") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise LoadError(f"{path} is not the index of a tera adapter store")
    version = index.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LoadError(
            f"{path} has format_version {version!r} but this tera reads up to "
            f"{FORMAT_VERSION}; upgrade tera"
        )
    if not isinstance(index.get("banks"), dict) or not isinstance(index.get("shards"), list):
        raise LoadError(f"{path} lacks its banks or shards; the index is corrupted")
    return index


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` by ``data`` atomically (written, synced, renamed)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as handle:
            json.dump(data, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _sync_dir(path.parent)


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform syncs a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sweep(folder: Path, index: Mapping[str, Any]) -> None:
    """Remove what killed writers left: temporary files and shards the index does not name."""
    named = {entry["file"] for entry in index["shards"]}
    for entry in folder.iterdir():
        leftover = entry.name.startswith(".") and entry.name.endswith(".tmp")
        orphan = entry.name.startswith("shard-") and entry.name.endswith(".safetensors")
        if (leftover or (orphan and entry.name not in named)) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _write_shard(path: Path, bank: str, rows: Sequence[torch.Tensor], stride: int) -> None:
    """A safetensors file: ``rows`` (F32, ``(n, stride)``, from a page) and ``checksums``.

    Written block by block (no copy of the whole table in memory), synced, then renamed.
    """
    row_bytes = len(rows) * stride * 4
    header: dict[str, Any] = {
        "__metadata__": {"format": FORMAT, "bank": bank},
        "rows": {"dtype": "F32", "shape": [len(rows), stride], "data_offsets": [0, row_bytes]},
        "checksums": {
            "dtype": "I64",
            "shape": [len(rows)],
            "data_offsets": [row_bytes, row_bytes + 8 * len(rows)],
        },
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _PAGE)  # the rows start on a page
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    sums = [torch.zeros(0, dtype=torch.int64)]
    try:
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(text)))
            handle.write(text)
            for start in range(0, len(rows), _BLOCK):
                chunk = list(rows[start : start + _BLOCK])
                block = torch.zeros(len(chunk), stride)
                block[:, : chunk[0].shape[0]] = torch.stack(chunk)
                sums.append(row_checksums(block))
                handle.write(block.numpy().astype("<f4", copy=False).tobytes())
            handle.write(torch.cat(sums).numpy().astype("<i8", copy=False).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
            if hasattr(os, "posix_fadvise"):  # written once, read by row: drop the pages
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _map_shard(path: Path, stride: int) -> RowTable:
    """Map a shard (no row is read); its header, size and layout are checked."""
    if not path.is_file():
        raise LoadError(f"{path.name} is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(_MAX_HEADER, size - 8):
                raise ValueError(f"a header of {length} bytes in a file of {size}")
            header = json.loads(handle.read(length))
            rows, sums = header["rows"], header["checksums"]
            n = int(rows["shape"][0])
            if rows["dtype"] != "F32" or list(rows["shape"]) != [n, stride]:
                raise ValueError(f"rows of {rows['dtype']} {rows['shape']}, not F32 [n, {stride}]")
            if sums["dtype"] != "I64" or list(sums["shape"]) != [n]:
                raise ValueError(f"checksums of {sums['dtype']} {sums['shape']}")
            row_bytes = n * stride * 4
            if list(rows["data_offsets"]) != [0, row_bytes] or list(sums["data_offsets"]) != [
                row_bytes,
                row_bytes + 8 * n,
            ]:
                raise ValueError("tensor offsets that do not fit their shapes")
            start = 8 + length
            if start % 8:
                raise ValueError("rows that do not start on an 8-byte boundary")
            if size != start + row_bytes + 8 * n:
                raise ValueError(
                    f"{size} bytes where the header needs {start + row_bytes + 8 * n} (truncated)"
                )
            if n == 0:
                return RowTable(
                    torch.zeros(0, stride), 0, str(path), torch.zeros(0, dtype=torch.int64)
                )
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as err:
        raise LoadError(f"{path.name} is corrupted or not a shard of this store ({err})") from None
    if hasattr(mmap, "MADV_RANDOM"):  # rows are read at random: no readahead around a fault
        mapped.madvise(mmap.MADV_RANDOM)
    table = torch.frombuffer(mapped, dtype=torch.float32, count=n * stride, offset=start)
    sums_t = torch.frombuffer(mapped, dtype=torch.int64, count=n, offset=start + row_bytes).clone()
    return RowTable(table.view(n, stride), n, str(path), sums_t, keep=mapped, offset=start)
