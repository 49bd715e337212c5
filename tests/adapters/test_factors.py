"""The frozen factors: a bit-exact stream, fingerprints, identical across processes."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import torch

from tera.adapters import TeRAConfig, adapt
from tera.adapters.factors import SharedFactors, counter_uniform, fingerprint
from tests.adapters.common import llama, make_config


def _splitmix_reference(key: str, n: int, bound: float) -> list[float]:
    """The generator's definition in plain Python integers (an independent oracle)."""
    mask = (1 << 64) - 1
    stream = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    out = []
    for i in range(1, n + 1):
        z = (stream + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out.append((2.0 * ((z >> 11) * 2.0**-53) - 1.0) * bound)
    return out


def test_stream_matches_its_definition_and_is_pinned():
    values = counter_uniform("tera|golden", (257,), bound=0.7)
    assert values.dtype == torch.float32
    expected = torch.tensor(
        _splitmix_reference("tera|golden", 257, 0.7), dtype=torch.float64
    ).float()
    assert torch.equal(values, expected)
    # pinned: if these change, every saved adapter would load with different factors
    pinned = [0.5438530445098877, 0.12185216695070267, -0.5761659741401672, 0.23201893270015717]
    assert counter_uniform("tera|golden", (4,), bound=1.0).tolist() == pinned


def test_stream_statistics_and_chunking():
    n = (1 << 22) + 1000  # crosses the generator's chunk boundary
    u = counter_uniform("stats", (n,), bound=1.0).numpy().astype(np.float64)
    assert abs(u.mean()) < 3e-3 and abs(u.var() - 1 / 3) < 3e-3
    assert np.abs(u).max() < 1.0
    assert len(np.unique(u[:10000])) == 10000
    head = counter_uniform("stats", (1000,), bound=1.0)  # prefix property of the counter
    assert torch.equal(head, torch.from_numpy(u[:1000].astype(np.float32)))


def test_keys_give_independent_streams():
    a = counter_uniform("a", (1000,), 1.0)
    b = counter_uniform("b", (1000,), 1.0)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1


def test_fingerprint_detects_any_change():
    t = counter_uniform("x", (10, 10), 1.0)
    fp = fingerprint([("x", t)])
    u = t.clone()
    u[3, 4] = torch.nextafter(u[3, 4], torch.tensor(2.0))
    assert fingerprint([("x", u)]) != fp
    assert fingerprint([("y", t)]) != fp
    assert fingerprint([("x", t.to(torch.bfloat16).float())]) != fp


def test_fingerprint_follows_the_values_held():
    """Moves that keep every value (float64 and back) keep it; a rounding one (bfloat16)
    gives the fingerprint of the values the model now computes with (issue 22)."""
    model = adapt(llama(), make_config("tera", "llama"))
    fp = model.shared_factors.fingerprint()
    model.double().float()
    assert model.shared_factors.fingerprint() == fp
    model.to(torch.bfloat16)
    rounded = [(k, t.float()) for k, t in model.shared_factors.items()]
    assert model.shared_factors.fingerprint() != fp
    assert model.shared_factors.fingerprint() == _combined(rounded)


def _combined(named) -> str:
    import hashlib

    h = hashlib.sha256()
    for key, t in sorted(named, key=lambda item: item[0]):
        h.update(f"{key}={fingerprint([(key, t)])};".encode())
    return h.hexdigest()


_CHILD = """
import json, sys
from tests.adapters.common import llama, make_config
from tera.adapters import adapt
for kind in ("tera", "vera"):
    m = adapt(llama(), make_config(kind, "llama"))
    print(json.dumps([kind, m.shared_factors.fingerprint(), [float(t.double().sum()) for _, t in m.shared_factors.items()]]))
"""


def test_identical_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    child = [json.loads(line) for line in out.stdout.splitlines()]
    torch.manual_seed(1234)  # torch's RNG state must not matter
    for kind, fp, sums in child:
        m = adapt(llama(), make_config(kind, "llama"))
        assert m.shared_factors.fingerprint() == fp
        assert [float(t.double().sum()) for _, t in m.shared_factors.items()] == sums


def test_shared_factors_set_checks_shape():
    shared = SharedFactors()
    shared.get_or_create("k", lambda: torch.zeros(2, 2))
    try:
        shared.set("k", torch.zeros(3))
    except ValueError as err:
        assert "has shape (2, 2), got (3,)" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected an error")


def test_other_seed_other_factors():
    a = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj"], seed=0))
    b = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj"], seed=1))
    assert a.shared_factors.fingerprint() != b.shared_factors.fingerprint()
