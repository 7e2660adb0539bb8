#!/usr/bin/env bash
# The main job on the embedded default (KJV corpus, English-Clone), CPU, 2 ranks through the real `deepspeed`
# launcher: data -> phase 1 (alignment init) -> phase 2 (LM on code-switched shards) -> held-out perplexity per
# language + alignment probe -> HF export. Re-running resumes (finished steps are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${DEMO_OUT:-runs/demo}
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false
# DeepSpeed on CPU over gloo, loopback only (STACK.md)
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 MASTER_ADDR=127.0.0.1 GLOO_SOCKET_IFNAME=lo
# megatron-core and torch print many notices without Transformer Engine / Apex on CPU: keep the console readable
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning}
mkdir -p "$OUT"
t0=$(date +%s)

echo "== 1/7 tokenizer (byte-level BPE, 4096 ids) on the embedded corpus"
[ -f "$OUT/tok/tokenizer.json" ] || $PY data_tools/train_tokenizer.py \
  --corpus data/embedded/kjv_train.jsonl.gz --vocab-size 4096 --out "$OUT/tok"

echo "== 2/7 English-Clone: disjoint English / Clone documents (9:1) + identity dictionary over the top 1500 ids"
[ -f "$OUT/clone/table/meta.json" ] || $PY data_tools/make_english_clone.py \
  --tokenizer "$OUT/tok" --out "$OUT/clone" --clone-fraction 0.1 --top-n 1500 --heldout-fraction 0.1

echo "== 3/7 training shards: input-only code-switching (p=0.05), 256-token samples, English:Clone = 9:1"
$PY data_tools/build_shards.py --out "$OUT/shards" --tokenizer "$OUT/tok" --table "$OUT/clone/table" \
  --corpus en="$OUT/clone/en.jsonl.gz" --corpus clone="$OUT/clone/clone.jsonl.gz" --clone-langs clone \
  --mixture en=0.9,clone=0.1 --p 0.05 --seq-len 256 --samples-per-shard 400 --shard-multiple 4 --workers 2

echo "== 4/7 held-out shards: the held-out slice in English and in Clone (no switching)"
$PY data_tools/build_shards.py --out "$OUT/heldout" --tokenizer "$OUT/tok" --table "$OUT/clone/table" \
  --corpus en=data/embedded/kjv_heldout.jsonl.gz --corpus clone=data/embedded/kjv_heldout.jsonl.gz \
  --clone-langs clone --p 0 --seq-len 256 --samples-per-shard 100 --no-progress

echo "== 5/7 verify the shards against their manifests"
$PY data_tools/verify_shards.py "$OUT/shards"
$PY data_tools/verify_shards.py "$OUT/heldout"

echo "== 6/7 train: phase 1 (alignment init) then phase 2 (LM), 2 CPU ranks, DeepSpeed ZeRO-3, HF export"
deepspeed --num_gpus 2 --master_addr 127.0.0.1 --master_port "${DEMO_PORT:-29533}" launchers/pretrain.py \
  --config configs/demo_english_clone.yaml run.out_dir="$OUT/train" data.shard_dir="$OUT/shards" \
  data.table_dir="$OUT/clone/table" data.tokenizer_dir="$OUT/tok"

echo "== 7/7 evaluate the export: held-out perplexity per language, alignment probe (seen / unseen words)"
$PY launchers/evaluate.py "$OUT/train" --lm-shards "$OUT/heldout" --probe-table "$OUT/clone/table" \
  --out "$OUT/train/eval/results.json" --markdown "$OUT/train/eval/results.md"

echo
echo "demo finished in $(( $(date +%s) - t0 )) s. Results:"
echo "  run folder      $OUT/train   (config.yaml, metrics.jsonl, tensorboard/, checkpoints/, hf/)"
echo "  evaluation      $OUT/train/eval/results.md  (+ results.json)"
echo "  data            $OUT/tok  $OUT/clone  $OUT/shards  $OUT/heldout"
