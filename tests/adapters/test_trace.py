"""trace_paths: the evaluation path of each layer, per caller, with nothing stored on the layer."""

import threading

import pytest
import torch
from torch import nn

from tera.adapters import LoRAConfig, PathTrace, TeRAConfig, adapt, trace_paths

WAIT = 60  # seconds an Event waits before the test fails instead of hanging


def _model():
    torch.manual_seed(0)
    return adapt(
        nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256)),
        TeRAConfig(in_mode=256, out_mode=4, target_modules=["0", "1"]),
    )


def test_a_trace_records_every_layer_of_a_call_and_the_last_call_wins():
    model = _model()
    with torch.no_grad(), trace_paths() as trace:
        model(torch.randn(1, 256))
        assert set(trace.values()) == {"push"}
        model(torch.randn(8, 1024, 256))
    assert isinstance(trace, PathTrace) and len(trace) == 2
    assert set(trace) == set(model.adapter_layers.values())
    assert {trace[layer] for layer in model.adapter_layers.values()} == {"materialize"}
    assert "2 layers" in repr(trace)


def test_calls_outside_a_trace_are_not_recorded_and_traces_nest():
    model = _model()
    layer = model.adapter_layers["0"]
    with torch.no_grad():
        with trace_paths() as outer:
            model(torch.randn(1, 256))
            with trace_paths() as inner:
                model(torch.randn(8, 1024, 256))
        model(torch.randn(8, 1024, 256))  # no trace open: nothing records it
    assert (outer[layer], inner[layer]) == ("push", "materialize")


def test_a_layer_the_trace_did_not_see_gets_our_key_error():
    model = _model()
    with trace_paths() as trace:
        pass
    with pytest.raises(KeyError, match="no plain adapter call inside the trace"):
        trace[model.adapter_layers["0"]]


def test_concurrent_calls_from_two_threads_keep_their_own_paths():
    """Thread A is held inside its call (after the path is recorded, in the base layer's
    forward) while thread B runs a call that takes the other path on the same layer; with
    the path on the shared layer, A would then read B's."""
    model = adapt(nn.Sequential(nn.Linear(256, 256)), LoRAConfig(r=4, target_modules=["0"]))
    layer = model.adapter_layers["0"]
    a_inside, b_done = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def hold_a(module, inputs):
        if threading.current_thread().name == "A":
            a_inside.set()
            assert b_done.wait(WAIT)

    handle = layer.base_layer.register_forward_pre_hook(hold_a)

    def run(name: str, tokens: int, after: threading.Event | None) -> None:
        try:
            if after is not None:
                assert after.wait(WAIT)
            with torch.no_grad(), trace_paths() as trace:
                model(torch.randn(tokens, 256))
            results[name] = trace[layer]
        except BaseException as error:  # reported by the main thread
            results[name] = error
        finally:
            if name == "B":
                b_done.set()

    threads = [
        threading.Thread(target=run, args=("A", 1, None), name="A"),
        threading.Thread(target=run, args=("B", 4096, a_inside), name="B"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    handle.remove()
    assert results == {"A": "push", "B": "materialize"}
