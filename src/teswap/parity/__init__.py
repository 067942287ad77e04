"""Parity: is the swapped model the same model as stock, at a precision?

    case.py          ParityCase and run_parity_case: stock and swapped against a high-precision reference
    metrics.py       error metrics on tensors (robust relative error, SQNR, KL, top-k, gradients, layers)
    capture.py       per-layer hidden states through forward hooks
    hf_checks.py     decode parity (cached vs uncached, swapped vs stock) and padded-batch parity
    rule.py          bounds, policies and the verdict they give (pure functions)
    policies.py      the named, versioned policy of each precision, with every bound's provenance
    policy_files.py  policies from JSON files, and --tol overrides
    text.py          a parity report as text (the check table, the run's one-line row)
"""
