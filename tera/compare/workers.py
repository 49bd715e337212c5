"""Run independent jobs of a comparison in a few spawned processes, sharing the CPU threads.

A small model's training step may use CPU threads poorly (the threads meet at every
parallel region; on a shared machine one slow thread holds the others), so a few processes
with fewer threads each, each training its own (task, method), can use the machine better
than one process with all the threads; measure on yours.
:func:`run_in_processes` runs picklable jobs that way; :func:`tera.compare.run.compare`
gives it its units (``workers=``, ``tera compare --workers N``). It knows nothing of
comparisons.

Examples
--------
>>> from operator import add
>>> from tera.compare.workers import run_in_processes, threads_per_worker
>>> run_in_processes(add, [(1, 2), (3, 4)], workers=1)  # one worker: in this process
[3, 7]
>>> threads_per_worker(2, threads=8)
4
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

import torch

from tera.errors import ConfigError

__all__ = ["check_workers", "run_in_processes", "threads_per_worker"]


def check_workers(workers: int) -> None:
    """Refuse a worker count below 1 with :class:`~tera.errors.ConfigError`."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}; use 1 for one process")


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """An equal share of ``threads`` (default: this process's torch threads), at least 1."""
    total = torch.get_num_threads() if threads is None else threads
    return max(1, total // workers)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_in_processes(
    job: Callable[..., Any], arguments: Sequence[tuple[Any, ...]], workers: int
) -> list[Any]:
    """Call ``job(*args)`` for every ``args`` in up to ``workers`` spawned processes.

    Each process takes the next job when it finishes one (no fixed split, so a long job
    does not hold the others back) and runs with :func:`threads_per_worker` torch threads.
    The first job that raises stops the rest: jobs not yet started are cancelled, the ones
    running are waited for, and its exception is raised here (so is a Ctrl-C; from a
    terminal it reaches the workers too, which stop at once). ``workers=1`` runs the jobs
    in this process, in order.

    Parameters
    ----------
    job : callable
        A module-level function (the processes are spawned: it is pickled by name).
    arguments : sequence of tuple
        One tuple of (picklable) positional arguments per job.
    workers : int
        How many processes at most.

    Returns
    -------
    list
        The jobs' results, in the order of ``arguments``.

    Raises
    ------
    ConfigError
        ``workers`` below 1.
    """
    check_workers(workers)
    if workers == 1 or len(arguments) <= 1:
        return [job(*args) for args in arguments]
    count = min(workers, len(arguments))
    context = multiprocessing.get_context("spawn")  # no forked torch state (threads, CUDA)
    pool = ProcessPoolExecutor(
        count,
        mp_context=context,
        initializer=_start_worker,
        initargs=(threads_per_worker(count),),
    )
    try:
        futures = [pool.submit(job, *args) for args in arguments]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        return [f.result() for f in futures]
    finally:  # an error or Ctrl-C: no job starts any more, the running ones end first
        pool.shutdown(wait=True, cancel_futures=True)
