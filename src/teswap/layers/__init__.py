"""The TE-layout decoder layers that replace HF's, for any family, and what they share.

    plan.py           LayerPlan: what a family tells a backend about one layer (TE's arguments, RoPE table)
    hf_adapter.py     fresh and loaded weights (TE-only zero biases frozen), the ONE HF-facing forward (HFDecoderCall)
    hf_inputs.py      an HF decoder call read once: mask, positions, cache, packing; what is refused
    rope.py           one RoPE table per model (per layer type) from the HF model's own inv_freq; `bind_rope`
    torch_modules.py  TE's LayerNormLinear, Linear, LayerNormMLP, RMSNorm in pure PyTorch (TE's names)
    torch_attention.py  TE's MultiheadAttention in pure PyTorch: q/k norm, partial RoPE, windows, GQA
    torch_layer.py    TE's TransformerLayer, and the composite of TE modules (sandwich norms), in pure PyTorch
    torch_moe.py      te_mixtral's MoE layer in pure PyTorch: router, moe_permute/unpermute, GroupedLinear experts
    fused_kernels.py  TE's RMSNorm and gated-activation (SwiGLU, GeGLU) kernels: fp32 compute, one rounding
    torch_backend.py  a family's twin class (`torch_decoder_class`) behind HF's call (CPU and any GPU)
    te_backend.py     a family's class on TE's TransformerLayer or composite modules, MoE composite included
    te_batch.py       one forward in TE's terms: real tokens first, padding_causal mask, RoPE, KV-cache step
    te_cache.py       TE's InferenceParams behind HF's Cache interface, for generate() on the te backend
    backends.py       the backend registry: name -> decoder class (for a family) and availability probe
"""
