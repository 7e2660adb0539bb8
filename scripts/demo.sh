#!/usr/bin/env bash
# The main job on the embedded default (KJV corpus, English-Clone), CPU only.
# Data: tokenizer -> English-Clone corpora + dictionary -> code-switched shards -> verify.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${DEMO_OUT:-runs/demo}
export TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
t0=$(date +%s)

echo "== 1/4 tokenizer (byte-level BPE, 4096 ids) on the embedded corpus"
[ -f "$OUT/tok/tokenizer.json" ] || $PY data_tools/train_tokenizer.py \
  --corpus data/embedded/kjv_train.jsonl.gz --vocab-size 4096 --out "$OUT/tok"

echo "== 2/4 English-Clone: disjoint English / Clone documents (9:1) + identity dictionary over the top 1500 ids"
[ -f "$OUT/clone/table/meta.json" ] || $PY data_tools/make_english_clone.py \
  --tokenizer "$OUT/tok" --out "$OUT/clone" --clone-fraction 0.1 --top-n 1500 --heldout-fraction 0.1

echo "== 3/4 shards: input-only code-switching (p=0.05), packed to 256 tokens, English:Clone = 9:1"
$PY data_tools/build_shards.py --out "$OUT/shards" --tokenizer "$OUT/tok" --table "$OUT/clone/table" \
  --corpus en="$OUT/clone/en.jsonl.gz" --corpus clone="$OUT/clone/clone.jsonl.gz" --clone-langs clone \
  --mixture en=0.9,clone=0.1 --p 0.05 --seq-len 256 --samples-per-shard 400 --shard-multiple 4 --workers 2

echo "== 4/4 verify the shards against their manifest"
$PY data_tools/verify_shards.py "$OUT/shards"

echo
echo "demo finished in $(( $(date +%s) - t0 )) s; results under $OUT/:"
echo "  tokenizer  $OUT/tok   English-Clone corpora + table  $OUT/clone   shards + manifest  $OUT/shards"
