"""The swap: which HF class is replaced, with what, and how the stock weights get into the new layers.

    presets.py   every family's named configs, gathered (each preset lives in its family's module)
    sources.py   a preset or checkpoint name, a config, a local path -> a config, its weights and tokenizer
    checkpoints.py  real checkpoints offline: hub-cache snapshots, GGUF converted once, smollm2-135m
    checkpoint_checks.py  a checkpoint's files whole and readable, every shard there, weights matching config.json
    positions.py the positions a model was built for; runs past them refused unless asked for
    replace.py   `replace_decoder`, the scoped, locked class swap (TE's te_llama pattern) for any family
    loading.py   from_pretrained under the swap: checkpoint keys mapped to the TE layout, or the load fails
    metadata.py  HF's model-level metadata made to follow the swap (output recording, no-split, TP)
    mapping.py   the HF <-> TE state-dict engine over a family's rules, raising on any key it cannot place
    pair.py      `build_pair`: stock and swapped models with identical weights, from one seed
    checksum.py  exact per-tensor checksums that prove the weights equal
"""
