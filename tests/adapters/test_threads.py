"""One model called from several threads at once: every call gets its own routing.

A mixed batch's routing (which adapter each row uses) travels with the call in a context
variable, never as state on the shared layers, so plain calls, mixed batches of different
sizes and ``generate`` running concurrently in threads each give what they give alone.

Tolerance: outputs are compared with the single-threaded run of the same call at 1e-5
(common.ATOL). The same call computes the same products; concurrent threads may only change
how the math library splits a GEMM among its own threads (a few float32 ulps of these O(1)
logits). A call routed to the wrong adapter differs by ~0.1 or more (checked below).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from tera.adapters import AdaptedModel
from tests.adapters.common import ATOL, RTOL, many_adapters

THREADS = 4
ROUNDS = 150  # calls per thread (generate calls are a fifth of them)
NAMES = ["a0", "a1", "a2", "a3"]


def _model() -> AdaptedModel:
    model, _ = many_adapters("tera", len(NAMES))  # adapters a0..a3, a0 active
    return model.eval()


def _calls(model: AdaptedModel) -> list[tuple[str, Callable[[], torch.Tensor]]]:
    """Plain calls, mixed batches of 1..6 rows, and generate, each a fresh function."""
    g = torch.Generator().manual_seed(0)
    calls: list[tuple[str, Callable[[], torch.Tensor]]] = []
    for rows in (1, 2, 3, 6):
        ids = torch.randint(1, 100, (rows, 7), generator=g)
        calls.append((f"plain {rows}", lambda ids=ids: model(input_ids=ids).logits))
        names = [(NAMES + ["__base__"])[(rows + b) % 5] for b in range(rows)]
        calls.append(
            (
                f"mixed {names}",
                lambda ids=ids, names=names: model(input_ids=ids, adapter_names=names).logits,
            )
        )
    prompt = torch.randint(1, 100, (3, 5), generator=g)
    calls.append(
        (
            "generate",
            lambda: model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                adapter_names=["a3", "__base__", "a1"],
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=0,
            ),
        )
    )
    return calls


def test_routing_is_per_call_under_concurrent_threads() -> None:
    model = _model()
    calls = _calls(model)
    with torch.no_grad():
        expected = [fn() for _, fn in calls]
        # the check has teeth: the routed rows really differ from another adapter's
        ids = torch.randint(1, 100, (1, 7))
        a1 = model(input_ids=ids, adapter_names=["a1"]).logits
        a2 = model(input_ids=ids, adapter_names=["a2"]).logits
        assert (a1 - a2).abs().max() > 0.05
    failures: list[str] = []
    done = [0] * THREADS
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        order = torch.randperm(len(calls), generator=torch.Generator().manual_seed(t)).tolist()
        barrier.wait()
        try:
            with torch.no_grad():
                for r in range(ROUNDS):
                    i = order[r % len(order)]
                    if calls[i][0] == "generate" and r % 5:
                        i = order[(r + 1) % len(order)]  # fewer of the slow generate calls
                        if calls[i][0] == "generate":
                            continue
                    got = calls[i][1]()
                    if not torch.allclose(got, expected[i], atol=ATOL, rtol=RTOL):
                        failures.append(f"thread {t}, call {calls[i][0]}")
                    done[t] += 1
        except Exception as err:  # an error in a thread must fail the test, not vanish
            failures.append(f"thread {t}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert min(done) >= ROUNDS * 0.8  # every thread really ran its calls


def test_a_thread_without_names_never_sees_another_threads_routing() -> None:
    """A plain call made while another thread is inside a mixed batch is a plain call."""
    model = _model()
    ids = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    inside = threading.Event()
    release = threading.Event()
    layer = next(iter(model.adapter_layers.values()))
    original = layer.base_layer.forward

    def paused_forward(x: torch.Tensor) -> torch.Tensor:
        if threading.current_thread().name == "mixed" and not inside.is_set():
            inside.set()  # the mixed call is now inside its routing context
            release.wait(timeout=60)
        return original(x)

    layer.base_layer.forward = paused_forward  # type: ignore[method-assign]
    mixed = threading.Thread(
        target=lambda: model(input_ids=ids[:1].repeat(3, 1), adapter_names=["a1", "a2", "a3"]),
        name="mixed",
    )
    with torch.no_grad():
        mixed.start()
        assert inside.wait(timeout=60)
        during = model(input_ids=ids).logits  # two rows: a leaked 3-row routing would fail
        release.set()
        mixed.join()
    torch.testing.assert_close(during, plain, atol=0, rtol=0)
