"""The evaluation suite (METHOD.md §5; docs/evaluation.md).

- `prealign_scale.model.view`: the model interface (HF export or the engine's megatron GPTModel) and batched pooling/scoring
- `text`: text -> ids per language (English-Clone shift); `io`: input files with ``file:line`` errors
- `lm_eval`: per-language loss / perplexity; `probe`: alignment probe; `retrieval`: sentence retrieval
- `knowledge`: fact rendering and querying; `transfer`: zero-shot cross-lingual transfer
- `report`: results JSON, markdown tables, plots; `run_eval`: `evaluate(run_or_hf_dir, eval_cfg)`
- `eval_sets`: the shipped sets of data/eval (built by data_tools/make_eval_sets.py)
"""
