#!/usr/bin/env bash
# Knowledge follow-up of the English-Clone reproduction: 60 facts x 100 English statements, the four arms on
# synth-3m (configs/repro/knowledge.sweep.yaml). Needs the main reproduction's tokenizer and Clone table
# (DATA_ONLY=1 bash scripts/repro.sh builds them in a minute). Resumable. About 20-30 min on 2 CPU cores.
#   PARALLEL=2 NPROC=1 bash scripts/repro_knowledge.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
R=runs/repro/data
D=runs/repro_knowledge/data
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false
[ -f "$R/clone/table/meta.json" ] || DATA_ONLY=1 bash scripts/repro.sh
mkdir -p "$D"
head -n 60 data/eval/facts.jsonl > "$D/facts60.jsonl"   # the first 20 subjects, 3 relations each
for arm in cs nocs; do
  p=0.05; [ $arm = nocs ] && p=0
  [ -f "$D/shards_$arm/manifest.json" ] || $PY data_tools/build_shards.py --out "$D/shards_$arm" \
    --tokenizer "$R/tok" --table "$R/clone/table" \
    --corpus en="$R/clone/en.jsonl.gz" --corpus clone="$R/clone/clone.jsonl.gz" --clone-langs clone \
    --mixture en=0.9,clone=0.1 --p $p --seq-len 256 --samples-per-shard 400 --shard-multiple 4 --workers 2 \
    --facts "$D/facts60.jsonl" --fact-templates data/eval/fact_templates.json --fact-repeats 100 --no-progress
done
[ -n "${DATA_ONLY:-}" ] && exit 0
$PY launchers/run_sweep.py configs/repro/knowledge.sweep.yaml --nproc "${NPROC:-2}" \
  --parallel "${PARALLEL:-1}" -- --config configs/repro/knowledge_eval.yaml
$PY launchers/sweep_report.py configs/repro/knowledge.sweep.yaml --out docs/results/english_clone_knowledge
