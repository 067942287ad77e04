"""Model families: one adapter per family, everything about it in its module (a plain registry of them).

    base.py      `Family`: what an adapter says (HF classes, refusals, TE arguments, mapping); `HFClasses`
    rules.py     the vocabulary of an HF <-> TE weight mapping (rename, concat, fused QKV, 1 + w, ...)
    llama.py     Llama (TE's te_llama)
    mistral.py   Mistral: a sliding window on every layer
    qwen2.py     Qwen2/2.5: q/k/v biases (TE's bias=True, the rest held at zero), per-layer windows
    qwen3.py     Qwen3: q/k RMSNorm before RoPE (TE >= 2.7)
    phi3.py      Phi-3: fused qkv and gate_up, partial rotary, longrope, a window, residual dropout
    gemma.py     Gemma: (1 + w) norms, tanh GeGLU, head_dim 256
    gemma3.py    Gemma3 text: a composite of TE modules (sandwich norms), (1 + w) q/k norms, two RoPE tables
    gemma2.py    Gemma2: refused (attention softcapping)
    moe.py       what the MoE families share: the MoE composite's plan, expert implementations, mapping
    mixtral.py   Mixtral: every layer a sparse MoE (te_mixtral's composite), Mistral's window
    qwen3_moe.py Qwen3-MoE: Qwen3's q/k norm, MoE layers among dense ones, norm_topk_prob
    registry.py  FAMILIES, get_family, family_for_config, decoder_class(family, backend)
"""

from teswap.families.registry import FAMILIES, decoder_class, family_for_config, get_family

__all__ = ["FAMILIES", "decoder_class", "family_for_config", "get_family"]
