#!/usr/bin/env bash
# The real-pair development job (make real-pair): English (KJV) -> Spanish (Reina-Valera 1909), the shipped pair
# of data/real/en-es (disjoint English / Spanish training chapters, a shared held-out slice, a dictionary induced
# from the aligned verses), CPU, 2 ranks through the real `deepspeed` launcher: bilingual tokenizer ->
# alignment table -> code-switched shards -> phase 1 + phase 2 -> held-out perplexity per language, alignment
# probe, parallel-verse retrieval, genre transfer English -> Spanish, translated facts. About 10 minutes on 2 CPU cores.
# Re-running resumes (finished steps are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${REAL_PAIR_OUT:-runs/real_pair}
PAIR=data/real/en-es
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false
# DeepSpeed on CPU over gloo, loopback only (STACK.md)
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 MASTER_ADDR=127.0.0.1 GLOO_SOCKET_IFNAME=lo
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning}
mkdir -p "$OUT"
t0=$(date +%s)

echo "== 1/7 tokenizer (byte-level BPE, 8192 ids) on both languages' training chapters"
[ -f "$OUT/tok/tokenizer.json" ] || $PY data_tools/train_tokenizer.py \
  --corpus $PAIR/en_train.jsonl.gz $PAIR/es_train.jsonl.gz --vocab-size 8192 --out "$OUT/tok"

echo "== 2/7 alignment table from the induced en-es dictionary (10% of the entries held out)"
[ -f "$OUT/table/meta.json" ] || $PY data_tools/build_table.py --dict $PAIR/dict.en-es.tsv --tokenizer "$OUT/tok" \
  --out "$OUT/table" --source-lang en --target-lang es --heldout-fraction 0.1 \
  --coverage-corpus $PAIR/en_train.jsonl.gz

echo "== 3/7 training shards: all training chapters (English 857, Spanish 285), English code-switched at p=0.05"
$PY data_tools/build_shards.py --out "$OUT/shards" --tokenizer "$OUT/tok" --table "$OUT/table" \
  --corpus en=$PAIR/en_train.jsonl.gz --corpus es=$PAIR/es_train.jsonl.gz --switch-langs en \
  --p 0.05 --seq-len 256 --samples-per-shard 400 --shard-multiple 4 --workers 2

echo "== 4/7 held-out shards: the held-out chapters in English and in Spanish (no switching)"
$PY data_tools/build_shards.py --out "$OUT/heldout" --tokenizer "$OUT/tok" --table "$OUT/table" \
  --corpus en=data/embedded/kjv_heldout.jsonl.gz --corpus es=$PAIR/es_heldout.jsonl.gz \
  --p 0 --seq-len 256 --samples-per-shard 100 --no-progress

echo "== 5/7 verify the shards against their manifests"
$PY data_tools/verify_shards.py "$OUT/shards"
$PY data_tools/verify_shards.py "$OUT/heldout"

echo "== 6/7 train: phase 1 (alignment init) then phase 2 (LM), 2 CPU ranks, DeepSpeed ZeRO-3, HF export"
deepspeed --num_gpus 2 --master_addr 127.0.0.1 --master_port "${REAL_PAIR_PORT:-29534}" launchers/pretrain.py \
  --config configs/real_pair_en_es.yaml run.out_dir="$OUT/train" data.shard_dir="$OUT/shards" \
  data.table_dir="$OUT/table" data.tokenizer_dir="$OUT/tok"

echo "== 7/7 evaluate: held-out perplexity per language, alignment probe, parallel verses, genre transfer, facts"
$PY launchers/evaluate.py "$OUT/train" --config configs/eval/real_pair_en_es.yaml --lm-shards "$OUT/heldout" \
  --probe-table "$OUT/table" --out "$OUT/train/eval/results.json" --markdown "$OUT/train/eval/results.md"

echo
echo "real-pair demo finished in $(( $(date +%s) - t0 )) s. Results:"
echo "  run folder      $OUT/train   (config.yaml, metrics.jsonl, tensorboard/, checkpoints/, hf/)"
echo "  evaluation      $OUT/train/eval/results.md  (+ results.json)"
echo "  data            $OUT/tok  $OUT/table  $OUT/shards  $OUT/heldout"
