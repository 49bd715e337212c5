"""TeRA under ``torch.distributed``: DDP with gloo, 2 CPU processes, float64.

What is checked, and why it holds:

* The frozen factors are *regenerated* on every rank from the seed (never broadcast): their
  fingerprint and a bit-exact checksum of their values are taken on each rank *before* the
  model is wrapped in DDP (DDP's constructor broadcasts rank 0's state), gathered, and
  compared. They are compared again after training (buffers are not broadcast:
  ``broadcast_buffers=False``).
* The d vectors are identical (bit for bit) on both ranks after every step: DDP all-reduces
  the gradients, so both ranks apply the same update.
* What is all-reduced is measured with a DDP communication hook (the bytes of every bucket
  handed to the all-reduce); it equals the adapter's trainable count times 8 (float64).
* Two ranks of 2 sequences each equal one process on the global batch of 4: the causal-LM
  loss is a mean over tokens and both halves have the same token count, so the average of
  the two ranks' gradients is the full batch's gradient. The sums are the same but added
  in another order, so the results agree to float64 rounding, not bit for bit. Over a few
  AdamW steps the d's are O(1) and each step's rounding is ~1e-16 relative; we assert
  1e-6 (the issue's bar) and print the measured difference (about 1e-15).
"""

from __future__ import annotations

import gc
import json
import math
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tera.adapters import TeRAConfig, adapt
from tests.adapters.common import llama

WORLD = 2
STEPS = 3
LOCAL_BATCH, SEQ, VOCAB = 2, 8, 64
TOLERANCE = 1e-6


def _model():
    base = llama(vocab_size=VOCAB).train()  # seeded: a pretrained checkpoint every rank loads
    # Deliberately scramble torch's RNG differently per process: the factors must not care.
    torch.manual_seed(1000 + (dist.get_rank() if dist.is_initialized() else 99))
    model = adapt(base, TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj", "v_proj"]))
    return model.to(torch.float64)


def _global_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, VOCAB, (STEPS, WORLD * LOCAL_BATCH, SEQ), generator=g)


def _optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)


def _ds(model) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in model.adapter_parameters()]


def _factor_state(model) -> dict[str, object]:
    shared = model.shared_factors
    return {
        "fingerprint": shared.fingerprint(),
        "checksums": [float(t.double().sum()) for _, t in shared.items()],
        "ptrs_shared": len({t.data_ptr() for _, t in shared.items()}) == len(shared.keys()),
    }


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        model = _model()
        before = _factor_state(model)  # taken before DDP could broadcast anything
        gathered: list[object] = [None] * WORLD
        dist.all_gather_object(gathered, before)

        with warnings.catch_warnings():
            # torch 2.13 deprecates broadcast_buffers in favour of forward_sync_buffers, which
            # still syncs buffers at init; False here is what keeps the factors rank-local.
            warnings.simplefilter("ignore", FutureWarning)
            ddp = DistributedDataParallel(model, broadcast_buffers=False)
        sizes: list[int] = []

        def allreduce_hook(state, bucket):  # PyTorch's default all-reduce, with a byte count
            buf = bucket.buffer()
            state.append(buf.numel() * buf.element_size())
            fut = dist.all_reduce(buf.div_(WORLD), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        ddp.register_comm_hook(sizes, allreduce_hook)
        opt = _optimizer(model)
        batches = _global_batch()[:, rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]
        per_step_bytes: list[int] = []
        ds_equal_each_step: list[bool] = []
        for step in range(STEPS):
            sizes.clear()
            ids = batches[step]
            ddp(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            per_step_bytes.append(sum(sizes))
            mine = torch.cat([d.reshape(-1) for d in _ds(model)])
            all_ds = [torch.empty_like(mine) for _ in range(WORLD)]
            dist.all_gather(all_ds, mine)
            ds_equal_each_step.append(all(torch.equal(all_ds[0], d) for d in all_ds))
        after = _factor_state(model)
        gathered_after: list[object] = [None] * WORLD
        dist.all_gather_object(gathered_after, after)
        if rank == 0:
            torch.save(_ds(model), Path(out_dir) / "ds.pt")
            report = {
                "factors_before": gathered,
                "factors_after": gathered_after,
                "per_step_bytes": per_step_bytes,
                "ds_equal_each_step": ds_equal_each_step,
                "trainable": model.trainable_parameter_count(),
            }
            (Path(out_dir) / "report.json").write_text(json.dumps(report))
        # Free DDP's reducer (it holds the process group) while both ranks are still alive:
        # destroying it after the peer has exited can hang in gloo's worker-thread join.
        del ddp
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _single_process() -> tuple[list[torch.Tensor], dict[str, object]]:
    model = _model()
    opt = _optimizer(model)
    for ids in _global_batch():
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return _ds(model), _factor_state(model)


@pytest.fixture(scope="module")
def single_run():
    return _single_process()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    init_method = f"file://{out / 'store'}"
    # fork: the children inherit the imported torch/transformers (spawn would re-import them,
    # ~10 s per process on 2 cores); no process group exists in the parent yet.
    context = mp.start_processes(
        _worker, args=(init_method, str(out)), nprocs=WORLD, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120  # ~2 s when healthy: a hang fails instead of stalling CI
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish within 120 s (killed)")
    report = json.loads((out / "report.json").read_text())
    return report, torch.load(out / "ds.pt")


def test_factors_are_identical_on_every_rank_without_a_broadcast(ddp_run, single_run):
    report, _ = ddp_run
    before, after = report["factors_before"], report["factors_after"]
    assert len(before) == WORLD
    assert all(state == before[0] for state in before)  # regenerated, bit-exact
    assert all(state == before[0] for state in after)  # and never changed by training
    assert before[0]["ptrs_shared"]
    # ... and identical to the factors of this (third) process
    _, local = single_run
    assert local == before[0]


def test_d_vectors_are_identical_after_every_step(ddp_run):
    report, _ = ddp_run
    assert report["ds_equal_each_step"] == [True] * STEPS


def test_bytes_all_reduced_per_step_are_the_d_vectors(ddp_run):
    report, _ = ddp_run
    trainable = report["trainable"]
    # 4 adapted layers: q_proj (32 | 2^5) -> 32 + 5 * 2 = 42, v_proj (32 | 2^4) -> 40
    assert trainable == 2 * 42 + 2 * 40 == 164
    assert report["per_step_bytes"] == [trainable * 8] * STEPS  # float64
    print(f"\nDDP all-reduces {trainable * 8} bytes per step ({trainable} float64 values)")


def test_ddp_equals_one_process_on_the_global_batch(ddp_run, single_run):
    _, ddp_ds = ddp_run
    single_ds, _ = single_run
    init = _ds(_model())
    assert len(ddp_ds) == len(single_ds) == len(init)
    moved = max(float((a - b).abs().max()) for a, b in zip(single_ds, init))
    assert moved > 0.05  # training moved the d's by far more than the tolerance
    diff = max(float((a - b).abs().max()) for a, b in zip(ddp_ds, single_ds))
    print(f"\nmax |d_ddp - d_single| = {diff:.3e} (tolerance {TOLERANCE:g})")
    assert math.isfinite(diff) and diff <= TOLERANCE
