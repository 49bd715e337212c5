#!/usr/bin/env bash
# Run the science jobs of a queue file one at a time, in order, under `nice -n 19`.
#
#   nohup benchmarks/science/queue.sh benchmarks/science/queue.txt > science.log 2>&1 &
#
# Each non-empty, non-comment line of the queue is one shell command run from the repository
# root, with $PY the Python and $SRC a snapshot of the committed code (`git archive HEAD`,
# taken when the line starts: edits in the work tree never reach a running job; run
# $SRC/benchmarks/x.py, or $PY -m tera.cli, which PYTHONPATH=$SRC makes the committed tera). A line that finished is recorded in <queue>.done (with its exit status) and never run
# again, so restarting the script after a kill continues with the first unfinished line (the
# harness's --resume keeps the finished runs of an interrupted line). Lines may be appended
# while it runs; the line `END` stops it.
set -u
queue=${1:?usage: queue.sh QUEUE_FILE}
done_file="$queue.done"
touch "$done_file"
cd "$(dirname "$0")/../.." || exit 1
snap_root=$(mktemp -d /tmp/tera-science-src.XXXXXX)
export PY=${PY:-/work/main/.venv/bin/python}
# one thread: under nice 19 on shared cores, two OpenMP threads wait on each other at every
# parallel region (a 0.2 s step took 25-40 s while other jobs ran); one thread just runs slower
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
while true; do
  next=""
  while IFS= read -r line; do
    [[ -z "${line// }" || "$line" == \#* ]] && continue
    if [[ "$line" == END ]]; then next=END; break; fi
    if ! grep -qxF "ok: $line" "$done_file"; then next=$line; break; fi
  done < "$queue"
  if [[ "$next" == END ]]; then echo "[queue $(date +%T)] END"; exit 0; fi
  if [[ -z "$next" ]]; then sleep 30; continue; fi
  export SRC="$snap_root/$(git rev-parse --short HEAD)"
  if [[ ! -d "$SRC" ]]; then mkdir -p "$SRC" && git archive HEAD tera benchmarks | tar -x -C "$SRC"; fi
  export PYTHONPATH=$SRC
  echo "[queue $(date +%T)] start (code of $(git rev-parse --short HEAD)): $next"
  nice -n 19 bash -c "$next"
  rc=$?
  echo "[queue $(date +%T)] exit $rc: $next"
  if [[ $rc -eq 0 ]]; then echo "ok: $next" >> "$done_file"; else echo "failed($rc): $next" >> "$done_file"; exit $rc; fi
done
