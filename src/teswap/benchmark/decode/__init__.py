"""Decode cells: a prompt's prefill, then exactly N greedy tokens over a KV cache, each token timed.

    steps.py        the decode step (Decoder, HFCacheDecoder, DecodeStep): each token marked on the clock
    token_clock.py  when each token exists: CUDA events on a GPU, the host clock on a CPU
    metrics.py      TTFT, TPOT, inter-token latency percentiles, decode and end-to-end tokens/s
    options.py      which decode cells cannot run, and why (GPU-only options, TE's FP8 rows rule)
    setup.py        a decode cell's cache and speed options applied
"""
