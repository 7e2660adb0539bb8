#!/usr/bin/env bash
# The English-Clone reproduction (issue 5 §2): data -> 12 runs (2 sizes x 4 arms, 2 seeds for the main size)
# -> evaluation -> docs/results/english_clone/ (tables, plots, per-run result JSON).
# Resumable: re-run after an interruption; finished runs are skipped. About 1-2 h on 2 CPU cores.
#   PARALLEL=2 NPROC=1 bash scripts/repro.sh     # two single-rank runs at a time instead of one 2-rank run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=runs/repro/data
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false

[ -f "$D/tok/tokenizer.json" ] || $PY data_tools/train_tokenizer.py \
  --corpus data/embedded/kjv_train.jsonl.gz --vocab-size 4096 --out "$D/tok"
[ -f "$D/clone/table/meta.json" ] || $PY data_tools/make_english_clone.py \
  --tokenizer "$D/tok" --out "$D/clone" --clone-fraction 0.1 --top-n 1500 --heldout-fraction 0.1
for arm in cs nocs; do
  p=0.05; [ $arm = nocs ] && p=0
  $PY data_tools/build_shards.py --out "$D/shards_$arm" --tokenizer "$D/tok" --table "$D/clone/table" \
    --corpus en="$D/clone/en.jsonl.gz" --corpus clone="$D/clone/clone.jsonl.gz" --clone-langs clone \
    --mixture en=0.9,clone=0.1 --p $p --seq-len 256 --samples-per-shard 400 --shard-multiple 4 --workers 2 \
    --facts data/eval/facts.jsonl --fact-templates data/eval/fact_templates.json --fact-repeats 10 --no-progress
done
$PY data_tools/build_shards.py --out "$D/heldout" --tokenizer "$D/tok" --table "$D/clone/table" \
  --corpus en=data/embedded/kjv_heldout.jsonl.gz --corpus clone=data/embedded/kjv_heldout.jsonl.gz \
  --clone-langs clone --p 0 --seq-len 256 --samples-per-shard 100 --no-progress

[ -n "${DATA_ONLY:-}" ] && exit 0
$PY launchers/run_sweep.py configs/repro/english_clone.sweep.yaml --nproc "${NPROC:-2}" \
  --parallel "${PARALLEL:-1}" -- --config configs/repro/eval.yaml
$PY launchers/sweep_report.py configs/repro/english_clone.sweep.yaml --out docs/results/english_clone
