"""Parity: is the swapped model the same model as stock, at a precision?

    case.py          ParityCase and run_parity_case: stock and swapped against a high-precision reference
    inputs.py        what a case feeds the models: real text through the tokenizer, else random ids
    corpus.py        the real text: Python's standard-library docstrings, tokenized into windows and prompts
    metrics.py       error metrics on tensors (per position and global; perplexity, gradients, layers)
    generation.py    greedy decoding of many prompts with the cache: matched prefix vs the reference
    capture.py       per-layer hidden states through forward hooks
    hf_checks.py     decode parity (cached vs uncached, swapped vs stock) and padded-batch parity
    paired.py        paired block bootstrap over per-position samples of stock and swapped
    rule.py          bounds and the two verdicts they give: the swap (vs stock) and the precision
    policies.py      the named, versioned policy of each precision, with every bound's provenance
    policy_files.py  policies from JSON files, and --tol overrides
    text.py          a parity report as text (the check table, the run's one-line row)
    mutations.py     deliberate faults (gate/up swapped, a layer at init, RoPE base, FP8 skipped) to catch
"""
