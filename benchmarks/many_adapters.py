"""100,000 adapters on one SmolLM2-135M: a store, random 64-adapter batches, training many.

For each kind (``--kinds``, default TeRA and VeRA, the harness's configs on ``q_proj`` and
``v_proj`` of a SmolLM2-135M-shaped model with random weights):

1. **store**: ``--adapters`` adapters with random tensors (their initialization plus noise)
   written to an :class:`~tera.adapters.store.AdapterStore` under ``--store-dir`` (written
   once; a store there holding as many adapters of the same bank is reused).
2. **open**: the time to open the store and ``load_adapters`` it into a model, and the
   growth of the process's resident memory (private and file-mapped, ``/proc``) per
   adapter: what an adapter costs before it is used.
3. **serving**: prefill and decode tokens/s of ``--rows``-row batches whose rows name
   ``--rows`` adapters drawn at random from the store, **a new draw every call**, against
   the same batch on one unmerged adapter (a module, plain forward: the reference of "x
   single"), the base model, and HF PEFT's LoRA mixed batch with ``--rows`` adapters (PEFT
   holds every adapter as modules in memory; the report says how many of its adapters fit
   in this machine's memory). Timed in one alternating loop (``_timing.alternate``).
   TeRA's prefill is also compared with its **FLOP floor**: a mixed batch cannot
   materialize one ``dW`` per layer, so it pushes every token through the factors; the
   floor is the throughput ratio the engine's own FLOP counts allow (base model FLOPs plus
   each adapted layer's cheapest mixed evaluation, against base plus the single adapter's
   cheapest evaluation), and the target is 0.9x of it.
4. **training many**: the step time (forward, backward, optimizer) of a batch whose rows
   name ``--train-rows`` adapters checked out as one group (``train_adapters``,
   ``RowAdamW``), against the same batch on one module adapter (``torch.optim.AdamW``).
5. **memory**: ``--memory-calls`` calls of ``--memory-rows`` one-token rows on adapters
   drawn afresh every call (logits of no position: the decoder only); private and mapped
   resident memory sampled along the way, and the adapters touched counted: private
   memory must stay flat, the resident growth within 1.2x the tensors touched.

Run (on an otherwise idle machine; ~30 GB of stores in ``--store-dir``, written once):
``.venv/bin/python benchmarks/many_adapters.py [--adapters 100000] [--kinds tera,vera]
[--store-dir /tmp/tera-stores] [--out benchmarks/results/many_adapters.md]``. A quick check
that it runs: ``--adapters 300 --layers 2 --rows 8 --length 4 --new-tokens 2 --reps 1
--memory-calls 40 --memory-rows 4 --train-rows 8 --train-length 4 --train-reps 1``.

:func:`write_adapters` (adapter folders with random d's) is what the test suite's
1,000-adapter test loads.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate, emit, machine, markdown_table
from model_step import smollm2_shape
from serve import decode_call, harness_config, peft_adapter_bytes, peft_lora, prefill_call

from tera.adapters import AdaptedModel, adapt, io, saving
from tera.adapters.rows import bank_key
from tera.adapters.store import INDEX_NAME, AdapterStore
from tera.compare.methods import METHODS

TARGETS = ("q_proj", "v_proj")
KINDS = ("tera", "vera")
TARGET_X_SINGLE = 0.9
TARGET_X_FLOOR = 0.9
TARGET_RESIDENT = 1.2
PARTS = ("prefill", "decode")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "many_adapters.md"


def _status() -> dict[str, int]:
    """The process's resident memory (bytes): private (RssAnon) and file-mapped (RssFile)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("RssAnon", "RssFile", "VmRSS"):
            found[key] = int(line.split()[1]) * 1024
    return found


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def write_adapters(template: AdaptedModel, root: Path, n: int) -> list[Path]:
    """``n`` adapter folders of ``template``'s scheme with random d's."""
    meta = saving.adapter_meta(template, False, "default")
    state = saving.adapter_state(template, False, "default")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    g = torch.Generator().manual_seed(0)
    folders = []
    for i in range(n):
        tensors = {k: 1.0 + 0.3 * torch.randn(s, generator=g) for k, s in shapes.items()}
        folder = root / f"user{i:04d}"
        io.write_adapter(folder, meta, tensors)
        folders.append(folder)
    return folders


def _randomized(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """An adapter's initial tensors ``state`` plus noise of 0.01 (``serve.randomize``)."""
    g = torch.Generator().manual_seed(seed)
    noise = 0.01 * torch.randn(sum(v.numel() for v in state.values()), generator=g)
    parts = noise.split([v.numel() for v in state.values()])
    return {k: v + n.reshape(v.shape) for (k, v), n in zip(state.items(), parts, strict=True)}


def ensure_store(template: AdaptedModel, folder: Path, n: int) -> tuple[Path, float | None]:
    """A store of ``n`` adapters of ``template``'s bank in ``folder``: reused, or written.

    Returns the folder and the seconds writing took (``None``: reused).
    """
    meta = saving.adapter_meta(template, False, "default")
    if (folder / INDEX_NAME).is_file():
        index = json.loads((folder / INDEX_NAME).read_text())
        count = sum(1 for s in index["shards"] for name in s["names"] if name is not None)
        if list(index["banks"]) == [bank_key(meta)] and count == n:
            return folder, None
        ours = (".json", ".safetensors", ".tmp")
        if any(p.name != ".lock" and p.suffix not in ours for p in folder.iterdir()):
            raise SystemExit(f"{folder} holds files that are no store's; choose another folder")
        shutil.rmtree(folder)
    start = time.perf_counter()
    state = saving.adapter_state(template, False, "default")
    g = torch.Generator().manual_seed(1)
    with AdapterStore.create(folder) as store:
        for first in range(0, n, 1024):  # 1,024 adapters at a time: initial values + noise
            count = min(1024, n - first)
            tensors = {
                k: v + 0.01 * torch.randn(count, *v.shape, generator=g) for k, v in state.items()
            }
            store.add_many([f"user{i:06d}" for i in range(first, first + count)], meta, tensors)
    return folder, time.perf_counter() - start


def _adapted(base: nn.Module, kind: str) -> AdaptedModel:
    """A copy of ``base`` with ``kind``'s harness adapter ("default", randomized), eval."""
    model = adapt(copy.deepcopy(base), harness_config(base, kind))
    state = _randomized(saving.adapter_state(model, False, "default"), seed=10**6)
    with torch.no_grad():
        for key, p in model.adapter_parameters():
            p.copy_(state[key])
    return model.eval()


def flop_floor(model: AdaptedModel, rows: int, length: int) -> dict[str, float]:
    """TeRA's prefill FLOP floor: base plus the cheapest single and mixed adapter paths.

    Per adapted layer (the engine's own FLOP counts, as it prices its choices): one
    adapter may materialize ``dW`` once and fuse it into ``W0`` (or push, if cheaper); a
    batch of ``rows`` different adapters of ``length`` tokens each can push every token
    through the factors in one pass or materialize adapter by adapter, whichever is
    cheaper. The base model's FLOPs: ``2 in out`` per token of every decoder Linear,
    ``4 length hidden`` per token and layer for attention (scores and values), and the
    head on the last position of each row (``logits_to_keep=1``).
    """
    tokens = rows * length
    base = 0.0
    for name, module in model.base_model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            base += 2 * module.in_features * module.out_features * tokens
        if name.endswith("lm_head") and isinstance(module, nn.Linear):
            base += 2 * module.in_features * module.out_features * rows
    config = model.base_model.config
    base += 4 * length * config.hidden_size * tokens * config.num_hidden_layers
    single = mixed = 0.0
    for layer in model.adapter_layers.values():
        w0 = layer.base_weight()
        costs = layer.engine(w0, "default").costs(tokens, fused=True, backward=False)
        single += min(costs.values())
        (slot,) = layer.row_slots.values()
        engine = slot.engine(w0)
        one_pass = engine.costs(tokens, fused=False, backward=False)["push"]
        alone = rows * min(engine.costs(length, fused=False, backward=False).values())
        mixed += min(one_pass, alone)
    return {
        "base_flops": base,
        "single_extra_flops": single,
        "mixed_extra_flops": mixed,
        "floor_x_single": (base + single) / (base + mixed),
        "push_flops_per_token": mixed / tokens,
    }


def _train_calls(
    model: AdaptedModel, names: list[str], rows: int, length: int, lr: float
) -> tuple[dict[str, Callable[[], None]], Callable[[], None]]:
    """One optimizer step on a group of ``rows`` adapters vs one module adapter."""
    ids = torch.randint(1, model.base_model.config.vocab_size, (rows, length))
    group = model.train_adapters(names[:rows])
    group_opt = group.optimizer(lr=lr)
    params = [p for _, p in model.adapter_parameters("default")]
    for p in params:
        p.requires_grad_(True)
    single_opt = torch.optim.AdamW(params, lr=lr)
    row_names = list(names[:rows])
    model.train()

    def many() -> None:
        model(input_ids=ids, labels=ids, adapter_names=row_names).loss.backward()
        group_opt.step()
        group_opt.zero_grad()

    def one() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        single_opt.step()
        single_opt.zero_grad()

    def done() -> None:
        model.eval()
        group.check_in()

    return {"one adapter": one, f"{rows} adapters (a group)": many}, done


def memory_run(
    model: AdaptedModel, names: list[str], calls: int, rows: int, touched: set[str]
) -> dict[str, Any]:
    """``calls`` one-token calls, a new draw of ``rows`` adapters each; memory sampled."""
    ids = torch.randint(1, model.base_model.config.vocab_size, (rows, 1))
    nothing = torch.zeros(0, dtype=torch.long)  # logits of no position: the decoder only
    rng = random.Random(7)
    every = max(1, calls // 20)
    samples: list[dict[str, int]] = []
    start_touched = len(touched)
    gc.collect()
    first = _status()
    with torch.no_grad():
        for call in range(1, calls + 1):
            draw = rng.sample(names, rows)
            touched.update(draw)
            model(input_ids=ids, adapter_names=draw, logits_to_keep=nothing)
            if call % every == 0 or call == calls:
                samples.append({"call": call, **_status(), "touched": len(touched)})
    return {
        "calls": calls,
        "rows": rows,
        "start": first,
        "samples": samples,
        "newly_touched": len(touched) - start_touched,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every part, for every kind; the raw results."""
    torch.manual_seed(0)
    base = smollm2_shape(args.layers).eval()
    vocab = base.config.vocab_size
    prompts = torch.randint(1, vocab, (args.rows, args.length))
    result: dict[str, Any] = {"machine": machine(), "kinds": {}, "mem_total": _mem_total()}
    models: dict[str, AdaptedModel] = {}
    names: dict[str, list[str]] = {}
    for kind in args.kinds:
        model = _adapted(base, kind)
        where = args.store_dir / f"{kind}-{args.layers}layers-{args.adapters}"
        folder, wrote = ensure_store(model, where, args.adapters)
        gc.collect()
        before = _status()
        start = time.perf_counter()
        store = AdapterStore.open(folder)
        added = model.load_adapters(store)
        opened = time.perf_counter() - start
        gc.collect()
        after = _status()
        models[kind], names[kind] = model, added
        row_bytes = model.adapter_bytes(added[0])
        result["kinds"][kind] = {
            "label": METHODS[kind].label,
            "adapters": len(added),
            "adapter_bytes": row_bytes,
            "store_bytes": sum(p.stat().st_size for p in folder.iterdir()),
            "write_s": wrote,
            "open_s": opened,
            "open_anon_per_adapter": (after["RssAnon"] - before["RssAnon"]) / len(added),
            "open_file_per_adapter": (after["RssFile"] - before["RssFile"]) / len(added),
        }
    peft, peft_names = peft_lora(args.rows, base)
    result["peft_adapter_bytes"] = peft_adapter_bytes(peft, peft_names[-1])
    plain = copy.deepcopy(base)

    # -- serving: prefill and decode ----------------------------------------------------
    rng = random.Random(0)
    touched: set[str] = set()

    def draw(kind: str) -> Callable[[], list[str]]:
        def names_now() -> list[str]:
            chosen = rng.sample(names[kind], args.rows)
            touched.update(chosen)
            return chosen

        return names_now

    peft_rows = [peft_names[b % len(peft_names)] for b in range(args.rows)]
    variants: dict[str, tuple[nn.Module, Any]] = {"base": (plain, None)}
    for kind in args.kinds:
        variants[f"{kind}/single"] = (models[kind], None)
        variants[f"{kind}/random{args.rows}"] = (models[kind], draw(kind))
    variants["peft-lora/single"] = (peft, None)
    variants[f"peft-lora/mixed{args.rows}"] = (peft, peft_rows)
    calls: dict[str, Callable[[], None]] = {}
    for key, (model, chosen) in variants.items():
        calls[f"{key} prefill"] = prefill_call(model, prompts, chosen)
        calls[f"{key} decode"] = decode_call(model, prompts, chosen, args.new_tokens)
    timed = alternate(calls, "base prefill", args.reps)
    tokens = {"prefill": args.rows * args.length, "decode": args.rows * args.new_tokens}
    serving: dict[str, Any] = {}
    for key in variants:
        kind = key.split("/")[0]
        for part in PARTS:
            times = timed[f"{key} {part}"].times
            entry: dict[str, Any] = {
                "times_s": times,
                "tokens_per_s": tokens[part] / statistics.median(times),
            }
            for measure, ref in (
                ("x_single", f"{kind}/single"),
                ("x_peft_mixed", f"peft-lora/mixed{args.rows}"),
            ):
                if key.endswith(f"/random{args.rows}") and ref in variants:
                    ratios = [
                        r / t for t, r in zip(times, timed[f"{ref} {part}"].times, strict=True)
                    ]
                    entry[measure] = {
                        "median": statistics.median(ratios),
                        "min": min(ratios),
                        "max": max(ratios),
                    }
            serving[f"{key} {part}"] = entry
    result["serving"] = serving
    if "tera" in models:
        result["tera_floor"] = flop_floor(models["tera"], args.rows, args.length)

    # -- training many ------------------------------------------------------------------
    training: dict[str, Any] = {}
    for kind in args.kinds:
        steps, done = _train_calls(
            models[kind],
            rng.sample(names[kind], args.train_rows),
            args.train_rows,
            args.train_length,
            lr=1e-3,
        )
        first = next(iter(steps))
        timed_train = alternate(steps, first, args.train_reps)
        training[kind] = {
            name: {
                "step_s": statistics.median(t.times),
                "tokens_per_s": args.train_rows * args.train_length / statistics.median(t.times),
                "x_one": 1.0 / t.ratio if name != first else 1.0,
            }
            for name, t in timed_train.items()
        }
        done()
    result["training"] = training

    # -- memory over many calls ---------------------------------------------------------
    result["memory"] = {
        kind: memory_run(models[kind], names[kind], args.memory_calls, args.memory_rows, touched)
        for kind in args.memory_kinds
    }
    result["settings"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
    }
    return result


def targets(result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets, each measured and met or not."""
    out: list[dict[str, Any]] = []

    def add(target: str, value: float, threshold: float, met: bool, unit: str = "x") -> None:
        out.append(
            {"target": target, "value": value, "threshold": threshold, "met": met, "unit": unit}
        )

    for kind, k in result["kinds"].items():
        add(
            f"{k['label']}: open {k['adapters']:,} adapters <= 60 s",
            k["open_s"],
            60.0,
            k["open_s"] <= 60.0,
            "s",
        )
        for part in PARTS:
            r = result["serving"][f"{kind}/random{args.rows} {part}"]["x_single"]["median"]
            if kind == "tera" and part == "prefill":
                floor = result["tera_floor"]["floor_x_single"]
                add(
                    f"TeRA prefill, {args.rows} random adapters: >= {TARGET_X_FLOOR:g}x its "
                    f"FLOP floor ({floor:.2f}x single)",
                    r / floor,
                    TARGET_X_FLOOR,
                    r / floor >= TARGET_X_FLOOR,
                )
            else:
                add(
                    f"{k['label']} {part}, {args.rows} random adapters: >= {TARGET_X_SINGLE:g}x "
                    "one unmerged adapter",
                    r,
                    TARGET_X_SINGLE,
                    r >= TARGET_X_SINGLE,
                )
    for kind, m in result["memory"].items():
        label = result["kinds"][kind]["label"]
        first, last = m["samples"][0], m["samples"][-1]
        growth = last["RssAnon"] - first["RssAnon"]
        limit = 0.01 * first["RssAnon"]
        add(
            f"{label}: private memory flat over calls {first['call']:,}..{last['call']:,} "
            "(growth < 1% of it)",
            growth / 2**20,
            limit / 2**20,
            growth < limit,
            "MiB",
        )
        tensors = m["newly_touched"] * result["kinds"][kind]["adapter_bytes"]
        resident = (last["RssAnon"] - m["start"]["RssAnon"]) + (
            last["RssFile"] - m["start"]["RssFile"]
        )
        ratio = resident / tensors if tensors else float("nan")
        add(
            f"{label}: resident growth <= {TARGET_RESIDENT:g}x the tensors touched",
            ratio,
            TARGET_RESIDENT,
            ratio <= TARGET_RESIDENT,
        )
    return out


def report(result: dict[str, Any], found: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown."""
    kib, mib = 1024, 2**20
    rows = args.rows
    store_rows = [
        [
            k["label"],
            f"{k['adapters']:,}",
            f"{k['adapter_bytes'] / kib:.1f} KiB",
            f"{k['store_bytes'] / 2**30:.2f} GiB",
            "reused" if k["write_s"] is None else f"{k['write_s']:.0f} s",
            f"{k['open_s']:.2f} s",
            f"{k['open_anon_per_adapter']:.0f} B + {k['open_file_per_adapter']:.0f} B",
        ]
        for k in result["kinds"].values()
    ]
    most = max(k["adapters"] for k in result["kinds"].values())
    serve_rows = []
    labels = {
        "base": "base model",
        "peft-lora/single": "PEFT LoRA r=32, one adapter",
        f"peft-lora/mixed{rows}": f"PEFT LoRA r=32, {rows} adapters (round robin)",
    }
    for kind, k in result["kinds"].items():
        labels[f"{kind}/single"] = f"{k['label']}, one adapter (module, unmerged)"
        labels[f"{kind}/random{rows}"] = (
            f"{k['label']}, {rows} adapters drawn from {k['adapters']:,} every call"
        )
    for key, label in labels.items():
        cells = [label]
        for part in PARTS:
            e = result["serving"][f"{key} {part}"]
            cells.append(f"{e['tokens_per_s']:,.0f}")
            for measure in ("x_single", "x_peft_mixed"):
                m = e.get(measure)
                cells.append(f"{m['median']:.2f} ({m['min']:.2f}..{m['max']:.2f})" if m else "-")
        serve_rows.append(cells)
    header = ["model / batch"]
    for part in PARTS:
        header += [f"{part} tokens/s", f"{part} x single", f"{part} x PEFT mixed"]
    text = [
        f"Machine: {result['machine']}.",
        "",
        f"SmolLM2-135M shape (random weights), {args.layers} layers, q_proj and v_proj adapted "
        "with the comparison harness's configs; every adapter's tensors random (its "
        "initialization plus noise), written once to a store and opened memory-mapped.",
        "",
        markdown_table(
            [
                "adapters",
                "in the store",
                "one adapter",
                "store on disk",
                "writing",
                "opening (+ load_adapters)",
                "resident per adapter after opening (private + mapped)",
            ],
            store_rows,
        ),
        "",
        f"Serving: {rows} rows per batch; prefill {rows} x {args.length} tokens (no grad, KV "
        f"cache filled, last position's logits), decode {args.new_tokens} greedy steps on a "
        f"prefilled cache. The random rows draw {rows} adapters afresh for every call. "
        f"{args.reps} alternating repetitions; ratios are of throughputs (median, min..max "
        "of per-repetition ratios).",
        "",
        markdown_table(header, serve_rows),
        "",
        f"PEFT holds every adapter as modules: one LoRA r=32 adapter takes "
        f"{result['peft_adapter_bytes'] / mib:.1f} MiB, so this machine's "
        f"{result['mem_total'] / 2**30:.0f} GiB hold at most "
        f"{result['mem_total'] // result['peft_adapter_bytes']:,} of them (weights alone); "
        f"{most:,} would take {most * result['peft_adapter_bytes'] / 2**30:,.0f} GiB.",
    ]
    if "tera_floor" in result:
        f = result["tera_floor"]
        text += [
            "",
            f"TeRA's prefill FLOP floor ({rows} x {args.length} tokens): the base model "
            f"{f['base_flops'] / 1e9:.1f} GFLOP; one adapter adds "
            f"{f['single_extra_flops'] / 1e9:.2f} GFLOP (each layer's dW built once and "
            f"fused into W0); {rows} different adapters "
            f"add {f['mixed_extra_flops'] / 1e9:.2f} GFLOP ({f['push_flops_per_token'] / 1e6:.2f} "
            "MFLOP per token over all adapted layers: the input factor's GEMM and the dense "
            "core's, the engine's count); floor = "
            f"({f['base_flops'] / 1e9:.1f} + {f['single_extra_flops'] / 1e9:.2f}) / "
            f"({f['base_flops'] / 1e9:.1f} + {f['mixed_extra_flops'] / 1e9:.2f}) = "
            f"{f['floor_x_single']:.2f}x the single adapter's throughput.",
        ]
    train_rows = [
        [
            result["kinds"][kind]["label"],
            name,
            f"{e['step_s']:.2f} s",
            f"{e['tokens_per_s']:,.0f}",
            f"{e['x_one']:.2f}",
        ]
        for kind, steps in result["training"].items()
        for name, e in steps.items()
    ]
    text += [
        "",
        f"Training: one AdamW step on {args.train_rows} rows x {args.train_length} tokens (LM "
        "loss), the rows naming one adapter each (a group checked out with train_adapters, "
        "RowAdamW) or all on one module adapter (torch AdamW); "
        f"{args.train_reps} alternating repetitions.",
        "",
        markdown_table(["adapter", "batch on", "step", "tokens/s", "x one adapter"], train_rows),
    ]
    for kind, m in result["memory"].items():
        first, last = m["samples"][0], m["samples"][-1]
        text += [
            "",
            f"Memory, {result['kinds'][kind]['label']}: {m['calls']:,} calls of {m['rows']} "
            "one-token rows, a new draw of adapters every call; private (RssAnon) and mapped "
            f"(RssFile) resident memory; {m['newly_touched']:,} adapters touched for the first "
            "time in this phase.",
            "",
            markdown_table(
                ["after call", "private MiB", "mapped MiB", "adapters touched so far"],
                [
                    [
                        f"{s['call']:,}",
                        f"{s['RssAnon'] / mib:,.0f}",
                        f"{s['RssFile'] / mib:,.0f}",
                        f"{s['touched']:,}",
                    ]
                    for s in [*m["samples"][:: max(1, len(m["samples"]) // 5)], last]
                ],
            ),
            "",
            f"Private memory from call {first['call']:,} to {last['call']:,}: "
            f"{(last['RssAnon'] - first['RssAnon']) / mib:+.1f} MiB.",
        ]
    text += [
        "",
        "Targets, from the numbers above:",
        "",
        markdown_table(
            ["target", "measured", "met"],
            [
                [
                    t["target"],
                    f"{t['value']:.3f} {t['unit']}".replace(" x", "x"),
                    "met" if t["met"] else "**missed**",
                ]
                for t in found
            ],
        ),
        "",
    ]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    """Measure and write the report (Markdown and JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=100_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--store-dir", type=Path, default=Path("/tmp/tera-stores"))
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--train-length", type=int, default=16)
    parser.add_argument("--train-reps", type=int, default=3)
    parser.add_argument("--memory-calls", type=int, default=10_000)
    parser.add_argument("--memory-rows", type=int, default=8)
    parser.add_argument("--memory-kinds", default="tera")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: write --out's Markdown again from a JSON this script wrote",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        try:
            result = json.loads(args.from_json.read_text())
            measured = argparse.Namespace(**{**result["settings"], "out": args.out})
            text = report(result, result["targets"], measured)
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--from-json {args.from_json}: not a JSON this script wrote ({error!r})")
        emit(text, args.out)
        return 0
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.memory_kinds = [k for k in args.memory_kinds.split(",") if k]
    if not args.kinds or any(k not in KINDS for k in args.kinds + args.memory_kinds):
        parser.error(f"--kinds, --memory-kinds: choose from {', '.join(KINDS)}")
    if any(k not in args.kinds for k in args.memory_kinds):
        parser.error("--memory-kinds must be among --kinds")
    if args.adapters < max(args.rows, args.train_rows, args.memory_rows):
        parser.error("--adapters must be at least --rows, --train-rows and --memory-rows")
    result = run(args)
    found = targets(result, args)
    result["targets"] = found
    emit(report(result, found, args), args.out)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
