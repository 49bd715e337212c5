"""Frozen shared factors: generated from a seed, bit-exact everywhere, shared by storage.

The random core and factors of TeRA (and VeRA's projections) are never trained and are
shared by every adapted layer of the same shape (paper Appendix J: sharing is what makes
TeRA train at all). They are therefore not saved by default: they are *regenerated* from
``(kind, shape, scheme, seed)``. That requires a random stream that is identical on every
machine, device and torch version, which ``torch.manual_seed`` does not promise. We use a
counter-based generator written here: SplitMix64 on ``key + i * golden``, where the 64-bit
key is the SHA-256 of a canonical description of the factor, then the top 53 bits as a
float64 in [0, 1). Only integer and IEEE float operations, so the result is bit-exact.

A SHA-256 fingerprint of the float32 values is saved with an adapter and checked on load.

**A model converted after** ``adapt`` (``model.to(torch.bfloat16)``) rounds its factors:
its outputs come from the rounded values, not the generated ones. :class:`SharedFactors`
records the narrowing conversions each factor went through (``factor_casts`` in the saved
JSON) and fingerprints the values it holds, so a save regenerates exactly those values on
load (the generated float32 values, rounded through the same dtypes: rounding is
deterministic) or, with ``include_factors``, stores and checks them as they are.

Examples
--------
>>> from tera.adapters.factors import counter_uniform
>>> a = counter_uniform("example", (2, 3), bound=1.0)
>>> bool((a == counter_uniform("example", (2, 3), bound=1.0)).all()), a.dtype
(True, torch.float32)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tera.adapters.io import FACTOR_PREFIX
from tera.errors import FingerprintError, LoadError

__all__ = ["SharedFactors", "counter_uniform", "fingerprint"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 22


def _stream_key(key: str) -> np.uint64:
    value: np.uint64 = np.uint64(
        int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    )
    return value


def counter_uniform(key: str, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    """Float32 tensor of ``shape`` drawn uniformly from ``[-bound, bound)``, bit-exact.

    The values depend only on ``key``, ``shape`` and ``bound`` (not on torch's RNG state,
    version, device or platform).

    Parameters
    ----------
    key : str
        Canonical description of the tensor (kind, name, shape, scheme, seed).
    shape : tuple of int
        Shape of the result.
    bound : float
        Half-width of the interval.

    Returns
    -------
    torch.Tensor
        A float32 CPU tensor.

    Examples
    --------
    >>> from tera.adapters.factors import counter_uniform
    >>> float(counter_uniform("k", (1000,), bound=2.0).abs().max()) <= 2.0
    True
    """
    n = math.prod(shape)
    stream = _stream_key(key)
    out = np.empty(n, dtype=np.float32)
    with np.errstate(over="ignore"):
        for start in range(0, n, _CHUNK):
            i = np.arange(start + 1, min(start + _CHUNK, n) + 1, dtype=np.uint64)
            z = stream + i * _GOLDEN
            z = (z ^ (z >> np.uint64(30))) * _MIX1
            z = (z ^ (z >> np.uint64(27))) * _MIX2
            z ^= z >> np.uint64(31)
            u = (z >> np.uint64(11)).astype(np.float64) * (2.0**-53)
            out[start : start + len(i)] = ((2.0 * u - 1.0) * bound).astype(np.float32)
    return torch.from_numpy(out.reshape(shape))


_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``."""
    return str(dtype).removeprefix("torch.")


def _covers(wide: torch.dtype, narrow: torch.dtype) -> bool:
    """Whether every value of ``narrow`` is exactly a value of ``wide``."""
    if wide == narrow:
        return True
    if not (wide.is_floating_point and narrow.is_floating_point):
        return False
    w, n = torch.finfo(wide), torch.finfo(narrow)
    return w.bits >= n.bits and w.eps <= n.eps and w.max >= n.max and w.tiny <= n.tiny


def _combined(fingerprints: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(fingerprints):
        h.update(f"{key}={fingerprints[key]};".encode())
    return h.hexdigest()


def fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over (name, shape, float32 little-endian bytes) of each tensor, sorted by name.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.factors import fingerprint
    >>> len(fingerprint([("a", torch.zeros(2))]))
    64
    """
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda item: item[0]):
        data = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
        h.update(f"{name}|{tuple(t.shape)}|".encode())
        h.update(data.tobytes())
    return h.hexdigest()


class SharedFactors(nn.Module):
    """Holds every frozen shared factor of one adapted model, one storage per key.

    The one instance is registered as a child of every adapted layer, so
    ``model.to(device, dtype)`` moves it (once: torch converts a module's buffers in place
    of the module, and every parent holds the same module), and layers look factors up at
    forward time, so every layer sees the same storage. Buffers are non-persistent: they
    are regenerated, not saved, unless asked for.

    Examples
    --------
    >>> from tera.adapters.factors import SharedFactors, counter_uniform
    >>> shared = SharedFactors()
    >>> a = shared.get_or_create("lora|A", lambda: counter_uniform("lora|A", (2, 2), 1.0))
    >>> b = shared.get_or_create("lora|A", lambda: counter_uniform("other", (2, 2), 1.0))
    >>> a.data_ptr() == b.data_ptr()
    True
    """

    def __init__(self) -> None:
        super().__init__()
        self._names: dict[str, str] = {}
        # fingerprint of the values held (None: to be taken again after a conversion rounded)
        self._fingerprints: dict[str, str | None] = {}
        self._builders: dict[str, Callable[[], torch.Tensor]] = {}
        self._built: dict[str, str] = {}  # fingerprints as first built (set() may replace)
        self._casts: dict[str, list[str]] = {}  # narrowing dtypes the values went through
        self._exact: dict[str, torch.dtype] = {}  # a dtype holding the values exactly
        self._replaced: set[str] = set()  # set() to values the seed does not give
        self._tensors: list[torch.Tensor] | None = None

    def keys(self) -> list[str]:
        """The factor keys held, in creation order."""
        return list(self._names)

    def index(self, key: str) -> int:
        """Position of ``key`` in :meth:`tensors` (fixed once the factor exists)."""
        return list(self._names).index(key)

    def tensors(self) -> list[torch.Tensor]:
        """The current tensors in creation order (the per-call lookup of the layers).

        Cached: rebuilt after the buffers change (a new factor, ``.to()``, ``to_empty()``).
        """
        found = self._tensors
        if found is None:
            found = self._tensors = [self.get(key) for key in self._names]
        return found

    def _apply(self, fn: Any, recurse: bool = True) -> SharedFactors:
        self._tensors = None
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._tensors = None
        for key in self._names:  # a conversion to a narrower dtype rounds the values
            dtype = self.get(key).dtype
            if not _covers(dtype, self._exact[key]):
                self._casts[key].append(dtype_name(dtype))
                self._exact[key] = dtype
                self._fingerprints[key] = None
        return self

    def register_buffer(
        self, name: str, tensor: torch.Tensor | None, persistent: bool = True
    ) -> None:
        """As ``torch.nn.Module.register_buffer`` (and drops the cached tensor list)."""
        self._tensors = None
        super().register_buffer(name, tensor, persistent)

    def get(self, key: str) -> torch.Tensor:
        """The current tensor for ``key`` (after any ``.to``)."""
        buf = self._buffers[self._names[key]]
        assert buf is not None
        return buf

    def get_or_create(
        self,
        key: str,
        build: Callable[[], torch.Tensor],
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Return the factor for ``key``, building it (on ``device``) the first time."""
        if key not in self._names:
            name = f"factor_{len(self._names)}"
            tensor = build()
            found = fingerprint([(key, tensor)])
            self._fingerprints[key] = found
            if device is not None:
                tensor = tensor.to(device)
            self._names[key] = name
            self._builders[key] = build
            self._built[key] = found
            self._casts[key] = []
            self._exact[key] = tensor.dtype
            self.register_buffer(name, tensor, persistent=False)
        return self.get(key)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Regenerate every factor in place from its seed (after ``to_empty``, or on ``meta``).

        The values are rebuilt in creation order by the same bit-exact generator and checked
        against the fingerprint taken at creation, then written into the current buffers
        (keeping their device and dtype). This is how a model adapted on the ``meta``
        device gets its factors: FSDP's ``param_init_fn`` and
        :meth:`~tera.adapters.AdaptedModel.to_empty` call it.

        Raises
        ------
        FingerprintError
            If a regenerated factor differs from the one first built.
        """
        for key in self._names:
            value = self._builders[key]()
            if fingerprint([(key, value)]) != self._built[key]:
                raise FingerprintError(
                    f"factor {key!r} regenerated differently from the one first built; the "
                    "generator is not deterministic on this platform: report this as a bug"
                )
            current = self.get(key)
            self._hold(key, value, [])
            self._replaced.discard(key)
            if not current.is_meta:  # on meta there is nothing to write into
                current.copy_(value.to(current.device, current.dtype))

    def _hold(self, key: str, source: torch.Tensor, casts: list[str]) -> None:
        """Record that ``key`` now holds ``source``, reached through ``casts``.

        A buffer narrower than ``source`` rounds it once more (one more cast).
        """
        held = self.get(key).dtype
        self._casts[key] = list(casts)
        self._exact[key] = source.dtype
        self._fingerprints[key] = fingerprint([(key, source)])
        if not _covers(held, source.dtype):
            self._casts[key].append(dtype_name(held))
            self._exact[key] = held
            self._fingerprints[key] = None

    def set(self, key: str, value: torch.Tensor) -> None:
        """Replace the values of an existing factor (shape must match).

        Values the seed does not give (after the conversions they record) mark the factor
        :meth:`replaced`.
        """
        current = self.get(key)
        if tuple(current.shape) != tuple(value.shape):
            raise LoadError(
                f"factor {key!r} has shape {tuple(current.shape)}, got {tuple(value.shape)}"
            )
        with torch.no_grad():
            current.copy_(value.to(current.device, current.dtype))
        self._hold(key, value, [])
        if self._fingerprints[key] == self._built[key] or (
            value.dtype != torch.float32
            and value.is_floating_point()
            and self._is_rounded_build(key, value)
        ):
            self._replaced.discard(key)
            if value.dtype != torch.float32:
                self._casts[key] = [dtype_name(value.dtype), *self._casts[key]]
        else:
            self._replaced.add(key)

    def _is_rounded_build(self, key: str, value: torch.Tensor) -> bool:
        """Whether ``value`` is the generated factor rounded to its dtype (a converted model's)."""
        built = self._builders[key]()
        return bool(torch.equal(built.to(value.dtype), value.to("cpu")))

    def held_fingerprint(self, key: str) -> str:
        """SHA-256 of the float32 values ``key`` holds now (taken again after a rounding)."""
        found = self._fingerprints[key]
        if found is None:
            found = self._fingerprints[key] = fingerprint([(key, self.get(key))])
        return found

    def fingerprint(self, keys: Iterable[str] | None = None) -> str:
        """SHA-256 of the values the given factors (all by default) hold, as float32.

        Taken when a factor is created (or replaced with :meth:`set`), and again (once)
        after a conversion rounded it: a model moved to float64 and back keeps it, one
        converted to bfloat16 gets the fingerprint of the values it now computes with.
        """
        chosen = sorted(self._names if keys is None else set(keys))
        return _combined({key: self.held_fingerprint(key) for key in chosen})

    def casts(self, keys: Iterable[str] | None = None) -> dict[str, list[str]]:
        """The narrowing dtypes each factor's values went through, for the factors with any."""
        chosen = self._names if keys is None else keys
        return {k: list(self._casts[k]) for k in chosen if self._casts[k]}

    def describe(self, keys: Sequence[str]) -> dict[str, Any]:
        """The JSON fields of a save that let a load rebuild exactly these factors' values.

        ``factor_fingerprint`` (of the values held), and ``factor_casts`` where a
        conversion rounded them.

        Examples
        --------
        >>> import torch
        >>> from tera.adapters.factors import SharedFactors, counter_uniform
        >>> shared = SharedFactors()
        >>> _ = shared.get_or_create("k", lambda: counter_uniform("k", (3,), 1.0))
        >>> _ = shared.to(torch.bfloat16)
        >>> shared.describe(["k"])["factor_casts"]
        {'k': ['bfloat16']}
        """
        out: dict[str, Any] = {"factor_fingerprint": self.fingerprint(keys)}
        casts = self.casts(keys)
        if casts:
            out["factor_casts"] = casts
        return out

    def replaced(self, keys: Iterable[str] | None = None) -> bool:
        """Whether any of the given factors (all by default) was :meth:`set` to other values.

        Such factors (e.g. a PEFT VeRA's projections) cannot be regenerated from the seed.
        """
        chosen = self._names if keys is None else keys
        return any(k in self._replaced for k in chosen)

    @torch.no_grad()
    def restore(
        self,
        keys: Sequence[str],
        meta: Mapping[str, Any],
        stored: Mapping[str, torch.Tensor] | None,
        others: Collection[str],
        where: str,
    ) -> None:
        """Give ``keys`` the values a saved adapter was computed with, checked.

        ``meta`` is the saved JSON (``factor_keys``, ``factor_fingerprint``, and
        ``factor_casts``), ``stored`` the factors saved in the file (by position in
        ``factor_keys``), or ``None``: regenerated from the seed, rounded through the
        recorded casts. Factors in ``others`` (used by the model's other adapters) must
        already hold those values: they are never changed.

        Raises
        ------
        FingerprintError
            The values do not match the saved fingerprint (another generator, or a file
            changed after the save), or the factor scheme differs.
        LoadError
            A stored factor is missing, or the other adapters' factors would change.
        """
        saved_keys = list(meta["factor_keys"])
        if sorted(keys) != sorted(saved_keys):
            raise FingerprintError(
                f"this tera builds factors {list(keys)} for the adapter but it was saved "
                f"with {saved_keys}; the factor scheme changed between versions"
            )
        values: dict[str, torch.Tensor] = {}
        chains: dict[str, list[str]] = {}
        if stored is not None:
            for i, key in enumerate(saved_keys):
                name = f"{FACTOR_PREFIX}{i}"
                if name not in stored:
                    raise LoadError(
                        f"the weights file in {where} lacks the factor '{key}' it should include"
                    )
                values[key], chains[key] = stored[name], []
        else:
            casts = meta.get("factor_casts", {})
            for key in keys:
                chains[key] = list(casts.get(key, []))
                if chains[key] == self._casts[key] and key not in self._replaced:
                    continue  # held already: nothing to regenerate
                value = self._builders[key]()
                for dtype in chains[key]:
                    value = value.to(_DTYPES[dtype])
                values[key] = value
        found = _combined(
            {
                key: fingerprint([(key, values[key])])
                if key in values
                else self.held_fingerprint(key)
                for key in keys
            }
        )
        if found != meta["factor_fingerprint"]:
            what = (
                "stored in the file"
                if stored is not None
                else (f"regenerated from seed {meta.get('seed')}")
            )
            raise FingerprintError(
                f"the factors {what} do not match the fingerprint saved with the adapter in "
                f"{where} ({found[:12]}... vs {str(meta['factor_fingerprint'])[:12]}...): "
                "loading would give a different model. Re-save the adapter with "
                "include_factors=True where it was trained."
            )
        for key, value in values.items():
            current = self.get(key)
            if key in others:
                if not torch.equal(value.to(current.device, current.dtype), current):
                    raise LoadError(
                        f"the adapter in {where} comes with frozen factors '{key}' that "
                        "differ from those the model's other adapters use under that key; "
                        "loading it would change them: load it into a model of its own"
                    )
                continue
            if stored is not None:
                self.set(key, value)
            else:
                current.copy_(value.to(current.device, current.dtype))
                self._hold(key, value, chains[key][:0])
                self._casts[key] = chains[key] + self._casts[key]
                self._replaced.discard(key)

    def snapshot(self) -> Callable[[], None]:
        """A function that puts every factor back as it is now (values and records)."""
        state = {
            key: (
                self.get(key).detach().clone(),
                self._fingerprints[key],
                list(self._casts[key]),
                self._exact[key],
                key in self._replaced,
            )
            for key in self._names
        }

        @torch.no_grad()
        def restore() -> None:
            for key, (value, fp, casts, exact, replaced) in state.items():
                self.get(key).copy_(value)
                self._fingerprints[key], self._casts[key], self._exact[key] = fp, casts, exact
                (self._replaced.add if replaced else self._replaced.discard)(key)

        return restore

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(key, tensor)`` pairs."""
        return [(k, self.get(k)) for k in self._names]

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"{len(self._names)} factor(s)"
