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
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

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
        self._fingerprints: dict[str, str] = {}
        self._builders: dict[str, Callable[[], torch.Tensor]] = {}
        self._built: dict[str, str] = {}  # fingerprints as first built (set() may replace)
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
            self._fingerprints[key] = fingerprint([(key, tensor)])
            if device is not None:
                tensor = tensor.to(device)
            self._names[key] = name
            self._builders[key] = build
            self._built[key] = self._fingerprints[key]
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
            self._fingerprints[key] = self._built[key]
            current = self.get(key)
            if not current.is_meta:  # on meta there is nothing to write into
                current.copy_(value.to(current.device, current.dtype))

    def set(self, key: str, value: torch.Tensor) -> None:
        """Replace the values of an existing factor (shape must match)."""
        current = self.get(key)
        if tuple(current.shape) != tuple(value.shape):
            raise LoadError(
                f"factor {key!r} has shape {tuple(current.shape)}, got {tuple(value.shape)}"
            )
        with torch.no_grad():
            current.copy_(value.to(current.device, current.dtype))
        self._fingerprints[key] = fingerprint([(key, value)])

    def fingerprint(self, keys: Iterable[str] | None = None) -> str:
        """SHA-256 of the float32 values of the given factors (all by default).

        Taken when a factor is created (or replaced with :meth:`set`), so moving the model
        to another dtype does not change it.
        """
        chosen = sorted(self._names if keys is None else set(keys))
        h = hashlib.sha256()
        for key in chosen:
            h.update(f"{key}={self._fingerprints[key]};".encode())
        return h.hexdigest()

    def replaced(self, keys: Iterable[str] | None = None) -> bool:
        """Whether any of the given factors (all by default) was :meth:`set` to other values.

        Such factors (e.g. a PEFT VeRA's projections) cannot be regenerated from the seed.
        """
        chosen = self._names if keys is None else keys
        return any(self._fingerprints[k] != self._built.get(k) for k in chosen)

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(key, tensor)`` pairs."""
        return [(k, self.get(k)) for k in self._names]

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"{len(self._names)} factor(s)"
