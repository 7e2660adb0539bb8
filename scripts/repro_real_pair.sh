#!/usr/bin/env bash
# The real-pair reproduction (issue 10, item 11): English -> Spanish on data/real/en-es. Data -> 15 runs
# (2 sizes x 5 arms: joint, cs, init, prealign, and the shuffled-dictionary control; 2 seeds for synth-3m)
# -> evaluation -> docs/results/real_pair_en_es/ (tables, plots, per-run result JSON).
# Resumable: re-run after an interruption; finished runs are skipped. About 2 h on 2 CPU cores.
#   PARALLEL=2 NPROC=1 bash scripts/repro_real_pair.sh     # two single-rank runs at a time
#   DATA_ONLY=1 bash scripts/repro_real_pair.sh            # only the data
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=runs/repro_en_es/data
PAIR=data/real/en-es
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false

[ -f "$D/tok/tokenizer.json" ] || $PY data_tools/train_tokenizer.py \
  --corpus $PAIR/en_train.jsonl.gz $PAIR/es_train.jsonl.gz --vocab-size 8192 --out "$D/tok"
[ -f "$D/table/meta.json" ] || $PY data_tools/build_table.py --dict $PAIR/dict.en-es.tsv --tokenizer "$D/tok" \
  --out "$D/table" --source-lang en --target-lang es --heldout-fraction 0.1 --coverage-corpus $PAIR/en_train.jsonl.gz
# the control's phase-1 table: the same words, paired at random (held-out entries unchanged)
[ -f "$D/table_shuffled/meta.json" ] || $PY data_tools/shuffle_table.py --table "$D/table" \
  --out "$D/table_shuffled" --seed 0
for arm in cs nocs; do
  p=0.05; [ $arm = nocs ] && p=0
  [ -f "$D/shards_$arm/manifest.json" ] || $PY data_tools/build_shards.py --out "$D/shards_$arm" \
    --tokenizer "$D/tok" --table "$D/table" \
    --corpus en=$PAIR/en_train.jsonl.gz --corpus es=$PAIR/es_train.jsonl.gz --switch-langs en --p $p \
    --seq-len 256 --samples-per-shard 400 --shard-multiple 4 --workers 2 \
    --facts $PAIR/eval/facts.en-es.jsonl --fact-templates $PAIR/eval/fact_templates.en-es.json \
    --facts-lang en --fact-repeats 10 --no-progress
done
[ -f "$D/heldout/manifest.json" ] || $PY data_tools/build_shards.py --out "$D/heldout" --tokenizer "$D/tok" \
  --table "$D/table" --corpus en=data/embedded/kjv_heldout.jsonl.gz --corpus es=$PAIR/es_heldout.jsonl.gz \
  --p 0 --seq-len 256 --samples-per-shard 100 --no-progress

[ -n "${DATA_ONLY:-}" ] && exit 0
$PY launchers/run_sweep.py configs/repro/real_pair_en_es.sweep.yaml --nproc "${NPROC:-2}" \
  --parallel "${PARALLEL:-1}" ${ONLY:+--only $ONLY} -- --config configs/repro/real_pair_eval.yaml
$PY launchers/sweep_report.py configs/repro/real_pair_en_es.sweep.yaml --out docs/results/real_pair_en_es
