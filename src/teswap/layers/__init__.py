"""The TE-layout decoder layers that replace HF's, and what they share.

    hf_adapter.py     config validation, TE's layer arguments, the ONE HF-facing forward (HFDecoderCall)
    hf_inputs.py      an HF decoder call read once: mask, positions, cache, packing; what is refused
    rope.py           one RoPE table per model from the HF model's own inv_freq; `bind_rope`
    torch_layer.py    TE's TransformerLayer math in pure PyTorch (module tree and names as TE's)
    fused_kernels.py  TE's RMSNorm and SwiGLU kernels: fp32 compute, one rounding, their FP8 casts
    torch_backend.py  `TorchLlamaDecoderLayer`: the twin behind HF's call (CPU and any GPU)
    te_backend.py     `TELlamaDecoderLayer` on transformer_engine.pytorch.TransformerLayer (made on demand)
    te_batch.py       one forward in TE's terms: real tokens first, padding_causal mask, RoPE, KV-cache step
    te_cache.py       TE's InferenceParams behind HF's Cache interface, for generate() on the te backend
    backends.py       the backend registry: name -> decoder class and availability probe
"""
