"""TeRA through PEFT under FSDP: 2 CPU processes (gloo), float64, against one process.

What is checked, and why it holds:

* The frozen factors are buffers of one ``SharedFactors`` registered on every TeRA layer: FSDP
  shards parameters, not buffers, so each rank keeps its own full copy, *regenerated* from the
  seed (torch's RNG is scrambled differently per rank first). Their fingerprint and a bit-exact
  checksum agree on both ranks, before wrapping and after training, they stay plain tensors
  (no ``DTensor``), and every layer of a shape still reads one storage.
* FSDP2 (``fully_shard`` on each decoder layer and the root) shards the base weights and the
  d's alike (per parameter, mixed ``requires_grad`` is fine). Its reduce-scatter averages the
  two ranks' gradients; each rank holds 2 of the global batch's 4 sequences, all of 8 tokens,
  so that average is the full batch's gradient (the causal-LM loss is a mean over tokens). The
  sums are the same, added in another order: the step-0 gradients and the d's after 3 AdamW
  steps agree with one process to float64 rounding. The tolerance is 1e-9 (values O(1), 3
  steps, float64 eps 2.2e-16: about 1e-15 is measured and printed), far below what a wrong
  reduction (a sum instead of a mean: a factor of 2) or an unsynchronized rank would give.
* ``save_pretrained`` from the sharded model (with the full state dict gathered by
  ``torch.distributed.checkpoint.state_dict.get_model_state_dict``) writes PEFT's folder; it
  loads to the sharded model's own outputs exactly (the same float64 values and operations).
* FSDP1 (``FullyShardedDataParallel``, ``use_orig_params=True``, each decoder layer a unit)
  works too: the same checks on its factors, trained d's and saved folder. Its gradients are
  not compared: ``summon_full_params(with_grads=True)`` fails on CPU with mixed
  ``requires_grad`` (see ``_full_grads``); the trained d's agreeing covers them.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import PeftConfig, get_peft_model
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    FullStateDictConfig,
    FullyShardedDataParallel,
    StateDictType,
    fully_shard,
)
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.distributed.tensor import DTensor
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from tera.integrations.peft import TeraConfig, TeraLayer
from tests.adapters.common import llama

WORLD, STEPS, LOCAL_BATCH, SEQ, VOCAB = 2, 3, 2, 8, 64
TOLERANCE = 1e-9
MODES = ("fsdp2", "fsdp1")
D_MARK = ".tera_adapters.default."


def _config() -> TeraConfig:
    return TeraConfig(
        in_mode=32, out_mode=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )


def _model():
    base = llama(vocab_size=VOCAB).train()  # seeded: the checkpoint every rank loads
    torch.manual_seed(1000 + (dist.get_rank() if dist.is_initialized() else 99))
    return get_peft_model(base, _config()).to(torch.float64)


def _global_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, VOCAB, (STEPS, WORLD * LOCAL_BATCH, SEQ), generator=g)


PROBE = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(8))


def _layers(model) -> list[TeraLayer]:
    return [m for m in model.modules() if isinstance(m, TeraLayer)]


def _factor_state(model) -> dict[str, object]:
    layers = _layers(model)
    shared = layers[0].tera_factors
    core = [lay.engine.adapter.operands(lay.engine.base_weight())[0] for lay in layers]
    q_cores = {core[i].data_ptr() for i, lay in enumerate(layers) if lay.out_features == 32}
    return {
        "one_store": all(lay.tera_factors is shared for lay in layers),
        "fingerprint": shared.fingerprint(),
        "checksums": [float(t.double().sum()) for _, t in shared.items()],
        "plain_tensors": not any(isinstance(t, DTensor) for _, t in shared.items()),
        "one_core_per_shape": len(q_cores) == 1,
        "not_parameters": not (
            {id(t) for _, t in shared.items()} & {id(p) for p in model.parameters()}
        ),
    }


def _clean(name: str) -> str:
    return name.replace("_fsdp_wrapped_module.", "").removeprefix("base_model.model.")


def _wrap(model, mode: str):
    if mode == "fsdp2":
        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    policy = functools.partial(
        transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer}
    )
    return FullyShardedDataParallel(
        model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu")
    )


def _full_grads(wrapped, mode: str) -> dict[str, torch.Tensor]:
    """The d's gradients gathered from the shards (FSDP2 only: FSDP1 has no working way here).

    FSDP1's ``summon_full_params(with_grads=True)`` fails on CPU with mixed ``requires_grad``:
    a rank whose shard of a unit holds no trainable value contributes a float32 zero gradient
    to a float64 all-gather (a collective mismatch), so FSDP1's gradients are not compared.
    """
    if mode != "fsdp2":
        return {}
    return {
        _clean(n): p.grad.full_tensor().clone()
        for n, p in wrapped.named_parameters()
        if p.requires_grad
    }


def _full_state_dict(wrapped, mode: str) -> dict[str, torch.Tensor]:
    """Every rank gathers the full (unsharded) state dict: a collective, called on all ranks.

    FSDP1 through its own API: ``get_model_state_dict(..., cpu_offload=True)`` crashes
    (SIGSEGV, in FSDP1's clone of an unsharded parameter) for a CPU model, LoRA's included.
    """
    if mode == "fsdp2":
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(wrapped, options=options)
    config = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
    with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
        return wrapped.state_dict()


def _run(rank: int, mode: str, out: Path) -> None:
    model = _model()
    gathered: list[object] = [None] * WORLD
    dist.all_gather_object(gathered, _factor_state(model))
    wrapped = _wrap(model, mode)
    wrapped_state = _factor_state(model)
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=5e-2)
    batches = _global_batch()[:, rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]
    grads: dict[str, torch.Tensor] = {}
    for step in range(STEPS):
        ids = batches[step]
        wrapped(input_ids=ids, labels=ids).loss.backward()
        if step == 0:
            grads = _full_grads(wrapped, mode)
        opt.step()
        opt.zero_grad()
    after: list[object] = [None] * WORLD
    dist.all_gather_object(after, _factor_state(model))
    with torch.no_grad():
        logits = wrapped(input_ids=PROBE).logits
    state = _full_state_dict(wrapped, mode)
    peft_model = wrapped.module if mode == "fsdp1" else wrapped
    peft_model.save_pretrained(out / mode, state_dict=state, is_main_process=rank == 0)
    if rank == 0:
        ds = {_clean(k): v for k, v in state.items() if D_MARK in k}
        torch.save({"grads": grads, "ds": ds, "logits": logits}, out / f"{mode}.pt")
        report = {"before": gathered, "wrapped": wrapped_state, "after": after}
        (out / f"{mode}.json").write_text(json.dumps(report))
    del wrapped, opt
    gc.collect()
    dist.barrier()


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        for mode in MODES:
            _run(rank, mode, Path(out_dir))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single_run():
    model = _model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    grads: dict[str, torch.Tensor] = {}
    for step, ids in enumerate(_global_batch()):
        model(input_ids=ids, labels=ids).loss.backward()
        if step == 0:
            grads = {
                _clean(n): p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
            }
        opt.step()
        opt.zero_grad()
    ds = {_clean(n): p.detach().clone() for n, p in model.named_parameters() if D_MARK in n}
    return {"grads": grads, "ds": ds, "factors": _factor_state(model)}


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    # fork: the children inherit the imported torch/transformers/peft (spawn would re-import
    # them, ~10 s per process on 2 cores); no process group exists in the parent yet
    context = mp.start_processes(
        _worker,
        args=(f"file://{out / 'store'}", str(out)),
        nprocs=WORLD,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + 240  # ~10 s when healthy: a hang fails instead of stalling CI
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the FSDP workers did not finish within 240 s (killed)")
    return out


def _result(out: Path, mode: str) -> tuple[dict, dict]:
    return torch.load(out / f"{mode}.pt"), json.loads((out / f"{mode}.json").read_text())


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b) and len(a) == 22
    return max(float((a[k] - b[k]).detach().abs().max()) for k in a)


@pytest.mark.parametrize("mode", MODES)
def test_shared_factors_stay_whole_shared_and_identical_on_every_rank(fsdp_runs, single_run, mode):
    _, report = _result(fsdp_runs, mode)
    reference = json.loads(json.dumps(single_run["factors"]))
    assert reference["one_store"] and reference["one_core_per_shape"]
    assert reference["plain_tensors"] and reference["not_parameters"]
    assert report["before"] == [reference] * WORLD  # regenerated bit for bit on each rank
    assert report["wrapped"] == reference  # FSDP left them whole, unsharded, shared, buffers
    assert report["after"] == [reference] * WORLD  # and training never touched them


@pytest.mark.parametrize("mode", MODES)
def test_trained_ds_equal_one_process(fsdp_runs, single_run, mode):
    result, _ = _result(fsdp_runs, mode)
    d_diff = _max_diff(result["ds"], single_run["ds"])
    initial = {_clean(n): p for n, p in _model().named_parameters() if D_MARK in n}
    moved = _max_diff(single_run["ds"], initial)
    print(f"\n{mode}: max |d - d_single| = {d_diff:.2e} after {STEPS} steps")
    assert moved > 0.05  # training moved the d's far more than the tolerance
    assert math.isfinite(d_diff) and d_diff <= TOLERANCE


def test_fsdp2_gradients_equal_one_process(fsdp_runs, single_run):
    result, _ = _result(fsdp_runs, "fsdp2")
    grad_diff = _max_diff(result["grads"], single_run["grads"])
    largest = max(float(g.abs().max()) for g in single_run["grads"].values())
    print(f"\nfsdp2: max |grad - grad_single| = {grad_diff:.2e} (largest |grad| {largest:.2e})")
    assert largest > 1e-3  # non-trivial gradients at step 0
    assert math.isfinite(grad_diff) and grad_diff <= TOLERANCE


@pytest.mark.parametrize("mode", MODES)
def test_save_pretrained_from_the_sharded_model_loads_to_its_outputs(fsdp_runs, mode):
    result, _ = _result(fsdp_runs, mode)
    folder = fsdp_runs / mode
    config = PeftConfig.from_pretrained(folder)
    # float64 d's, as trained: the adapter is built, moved to float64, then its weights loaded
    model = get_peft_model(llama(vocab_size=VOCAB), config).to(torch.float64)
    model.load_adapter(folder, adapter_name="default")
    loaded = {_clean(n): p for n, p in model.named_parameters() if D_MARK in n}
    assert all(torch.equal(loaded[k], v) for k, v in result["ds"].items())
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=PROBE).logits, result["logits"])
