"""Saves killed for real: every folder loads one whole version, and no litter survives.

A subprocess saves three folders over and over, each save a new version ``v``: a single
TeRA adapter (its frozen factors stored in every other version), three TeRA adapters
saved as one (``default`` in the folder, ``b`` and ``c`` below it, beside files a
``Trainer`` checkpoint holds), and a LoRA in PEFT's format. Version ``v`` puts ``v`` into
the first value of every adapter, random values (seeded by ``v``) elsewhere, and
``dropout = (v % 7) / 10`` into the JSON: a mix of two saves shows in the values, between
the adapters of one save, or between the JSON and the weights. The subprocess logs
``saving v`` / ``saved v`` (unbuffered) around each save.

``test_random_sigkills``: the subprocess is killed with SIGKILL at a random moment, 60
times. After each kill every folder must load (tera's loader, through a journal if one
is left) to exactly the values of one version, the same for all adapters of a folder,
the JSON's dropout that version's, and that version the last one saved or the one being
saved. Kills at random moments rarely land in the few microseconds between the commit
and the end of the moves, so ``test_a_kill_at_every_step`` kills a save of the
three-adapter folder before each of its file-system calls in turn and checks the same,
plus which version: the old one up to the commit (the journal's rename), the new one
after. Then one more save must leave no staging folder, journal or temporary file.

Processes start by ``fork`` from one that imported torch and tera once (a fresh
interpreter per kill would spend seconds importing).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tera.adapters import AdaptedModel, LoRAConfig, TeRAConfig, adapt
from tera.adapters.atomic import JOURNAL
from tera.adapters.io import sweep_leftovers

FOLDERS = ("single", "multi", "peft")
EXTRA = {"optimizer.pt": b"optimizer state", "trainer_state.json": b'{"global_step": 2}'}
KILLS = 60


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)).eval()


def _names(folder: str) -> list[str]:
    return ["default", "b", "c"] if folder == "multi" else ["default"]


def _config(folder: str, v: int) -> TeRAConfig | LoRAConfig:
    dropout = (v % 7) / 10
    if folder == "peft":
        return LoRAConfig(r=2, dropout=dropout, target_modules=["0", "2"])
    return TeRAConfig(in_mode=4, out_mode=4, dropout=dropout, target_modules=["0", "2"])


def model_for(folder: str, v: int) -> AdaptedModel:
    """Version ``v`` of the model saved into ``folder``."""
    config = _config(folder, v)
    model = adapt(_base(), config)
    for name in _names(folder)[1:]:
        model.add_adapter(name, config)
    gen = torch.Generator().manual_seed(v)
    with torch.no_grad():
        for name in _names(folder):
            for i, (_, p) in enumerate(model.adapter_parameters(name)):
                p.copy_(torch.randn(p.shape, generator=gen))
                if i == 0:
                    p.view(-1)[0] = float(v)  # exact in float32 below 2**24
    return model


def save_version(root: Path, folder: str, v: int) -> None:
    model = model_for(folder, v)
    fmt = "peft" if folder == "peft" else "tera"
    model.save_pretrained(
        root / folder, include_factors=folder == "single" and v % 2 == 0, format=fmt
    )


def _values(model: AdaptedModel) -> dict[str, torch.Tensor]:
    return {
        f"{name}/{key}": p.detach().clone()
        for name in model.adapter_names
        for key, p in model.adapter_parameters(name)
    }


def loaded_version(root: Path, folder: str) -> int:
    """The one version ``folder`` loads to (asserting that it is one whole version)."""
    names = _names(folder)
    model = AdaptedModel.from_pretrained(_base(), root / folder)
    for name in names[1:]:
        model.load_adapter(root / folder / name, adapter_name=name)
    firsts = {name: next(iter(model.adapter_parameters(name)))[1] for name in names}
    versions = {name: int(p.view(-1)[0]) for name, p in firsts.items()}
    v = versions["default"]
    assert set(versions.values()) == {v}, f"{folder}: adapters of different saves {versions}"
    expected = model_for(folder, v)
    for name in names:
        assert model.peft_config[name].dropout == (v % 7) / 10, (
            f"{folder}/{name}: JSON of another save"
        )
    got, want = _values(model), _values(expected)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{folder} {key}: not the values of version {v}"
    return v


def _raw_ids_agree(directory: Path) -> bool:
    """Without a journal, the two files on disk carry one save_id (read without tera)."""
    meta = json.loads((directory / "adapter_config.json").read_text())
    raw = (directory / "adapter_model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n]).get("__metadata__", {})
    return meta.get("save_id") == header.get("tera_save_id")


def _started(path: Path, since: int) -> tuple[dict[str, set[int]], int]:
    """Per folder, the versions whose save began after byte ``since`` of the log; new end."""
    text = path.read_text()
    started: dict[str, set[int]] = {folder: set() for folder in FOLDERS}
    for line in text[since:].splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "saving":  # a line cut by the kill is incomplete
            started[parts[1]].add(int(parts[2]))
    return started, len(text)


_ZYGOTE = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # no thread pool to fork
from tests.adapters import test_atomic_save as t

root, log = Path(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    k, mode, arg = line.split()
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        if mode == "loop":
            sys.stdout.write(f"ready {os.getpid()}\\n"); sys.stdout.flush()
            i = 0
            while True:
                for folder in t.FOLDERS:
                    i += 1
                    v = int(k) * 100000 + i
                    os.write(fd, f"saving {folder} {v}\\n".encode())
                    t.save_version(root, folder, v)
                    os.write(fd, f"saved {folder} {v}\\n".encode())
        else:  # kill-at: die before the arg-th file-system call of one save of "multi"
            t.kill_at(int(arg))
            v = int(k) * 100000
            os.write(fd, f"saving multi {v}\\n".encode())
            t.save_version(root, "multi", v)
            os.write(fd, f"saved multi {v}\\n".encode())
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(f"dead {status}\\n"); sys.stdout.flush()
"""

_HOOKED = ("replace", "fsync", "unlink", "mkdir", "rmdir", "chmod", "open")


def kill_at(n: int, calls: list[str] | None = None) -> None:
    """Count the file-system calls of what follows; SIGKILL this process before the n-th.

    With ``calls`` given, only record them (``n`` unused): the list of a whole save.
    """
    import tera.adapters.io as tio

    count = [0]

    def hook(name, real):
        def call(*args, **kwargs):
            count[0] += 1
            if calls is not None:
                target = args[1] if name == "replace" else (args[0] if args else "")
                calls.append(
                    f"{name} {Path(str(target)).name}" if not isinstance(target, int) else name
                )
            elif count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    for name in _HOOKED:
        setattr(os, name, hook(name, getattr(os, name)))
    tio.save_file = hook("save_file", tio.save_file)


class _Zygote:
    def __init__(self, root: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, str(root), str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _prepare(root: Path) -> None:
    for folder in FOLDERS:
        save_version(root, folder, 0)
    for name, data in EXTRA.items():
        (root / "multi" / name).write_bytes(data)


def _litter(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((".tera-", ".adapter_")) or p.name.endswith((".tmp", ".bak"))
    )


def _check_all(root: Path, log: Path, known: dict[str, int], since: int) -> tuple[int, bool, int]:
    """Check every folder after a kill: one whole version, the one it held at the last
    check or one whose save began since. Returns (adapter folders checked, a journal was
    left, the log's end)."""
    started, end = _started(log, since)
    checked, journal = 0, False
    for folder in FOLDERS:
        v = loaded_version(root, folder)
        allowed = {known[folder], *started[folder]}
        assert v in allowed, f"{folder}: version {v}, not one of {sorted(allowed)}"
        known[folder] = v
        checked += len(_names(folder))
        left = (root / folder / JOURNAL).exists()
        journal = journal or left
        if not left and folder != "peft":
            for name in _names(folder):
                sub = root / folder if name == "default" else root / folder / name
                assert _raw_ids_agree(sub), f"{sub}: the two files of two saves"
    for name, data in EXTRA.items():
        assert (root / "multi" / name).read_bytes() == data
    return checked, journal, end


def test_random_sigkills(tmp_path):
    root, log = tmp_path / "root", tmp_path / "log"
    root.mkdir()
    _prepare(root)
    log.write_text("")
    zygote = _Zygote(root, log)
    rng = random.Random(22)
    kills = checked = journals = since = 0
    known = dict.fromkeys(FOLDERS, 0)
    try:
        for k in range(1, KILLS + 1):
            zygote.send(f"{k} loop -")
            ready, pid = zygote.read().split()
            assert ready == "ready"
            # The kill's moment, uniform over about a dozen save cycles (~10-40 ms each):
            # this wait is what the test varies, not a synchronization.
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(int(pid), signal.SIGKILL)
            assert zygote.read() == f"dead {int(signal.SIGKILL)}"  # killed, not finished
            kills += 1
            n, journal, since = _check_all(root, log, known, since)
            checked += n
            journals += journal
    finally:
        zygote.close()
    for folder in FOLDERS:  # one more save: nothing a kill left survives it
        save_version(root, folder, 10**7 + FOLDERS.index(folder))
    assert _litter(root) == []
    assert sorted(os.listdir(root / "multi")) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "b", "c", *EXTRA]
    )
    print(
        f"\n{kills} SIGKILLs, {checked} adapter folders checked, 0 mixes, {journals} left a journal"
    )
    assert kills == KILLS


def test_a_kill_at_every_step(tmp_path):
    root, log = tmp_path / "root", tmp_path / "log"
    root.mkdir()
    _prepare(root)
    log.write_text("")
    calls: list[str] = []
    probe = tmp_path / "probe"
    probe.mkdir()
    save_version(probe, "multi", 1)  # the first save of a folder differs: count a second
    real = {name: getattr(os, name) for name in _HOOKED}
    import tera.adapters.io as tio

    real_save = tio.save_file
    try:
        kill_at(0, calls)
        save_version(probe, "multi", 2)
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)
        tio.save_file = real_save
    commit = calls.index(f"replace {JOURNAL}") + 1  # the n-th call is the commit
    assert commit > 1 and len(calls) > commit + 6  # staged writes before, moves after
    zygote = _Zygote(root, log)
    previous = 0
    try:
        for n in range(1, len(calls) + 1):
            sweep_leftovers(root / "multi")  # each save starts clean: the same n-th call
            zygote.send(f"{n} kill-at {n}")
            assert zygote.read() == f"dead {int(signal.SIGKILL)}", calls[n - 1]
            v = loaded_version(root, "multi")
            expected = previous if n <= commit else n * 100000
            assert v == expected, f"killed before call {n} ({calls[n - 1]}): version {v}"
            previous = v
            for name, data in EXTRA.items():
                assert (root / "multi" / name).read_bytes() == data
    finally:
        zygote.close()
    save_version(root, "multi", 10**7)
    assert _litter(root) == []
