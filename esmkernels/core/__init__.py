"""The bottom layer of esmkernels: what every other layer stands on.

Configuration (`configuration`), model outputs (`outputs`), the pretrained-model base
(`modeling_utils`, with `key_fitting` and `materialize`: loading without initialising), the
tokenizer (`tokenization`), checkpoint formats (`checkpoint`, `hf_checkpoint`, `fair_esm`,
`convert_esmfold`), variant scoring on logits (`variants`), the token-budget
batcher (`batching`) and the out-of-memory helpers (`memory`).

Nothing here imports `esmkernels.reference`, `ops`, `models`, the jobs, the API or the CLI;
`tests/test_layers.py` keeps it so. See docs/ARCHITECTURE.md.
"""
