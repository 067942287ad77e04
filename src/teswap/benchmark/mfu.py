"""Model FLOPs per token (GQA-aware, from the config) and MFU against a table of dense GPU peaks.

Convention (PaLM appendix B, as torchtitan and nanoGPT use it): training costs 6 FLOPs per matmul
parameter per token plus 12·L·H·Q·T for attention scores and values (L layers, H query heads, Q head
dim, T sequence length; causal masking is not halved); a forward costs a third of that. "Matmul
parameters" are the q/k/v/o, gate/up/down and lm_head weights: the input-embedding lookup and the
RMSNorm gains do no matmul. GQA enters through the k/v projection sizes, not the attention term,
which depends on the number of query heads only.

Prefill keeps only the last position's logits (as generation does), so its lm_head runs once per
sequence; its FLOPs per token carry the lm_head divided by T.

Decode counts its N - 1 one-token forwards over the cache (the prefill that gives the first token is
prefill's business): each costs 2 FLOPs per matmul parameter, lm_head included (every token's logits),
plus 4·L·H·Q·c for one query over the c keys in the cache. Forward i (1..N-1) sees c = P + i keys for
a prompt of P tokens, so per decode token c averages P + N/2. Decode MFU is taken at the decode
tokens/s (batch × (N - 1) / decode time), and is small by nature: decode reads every weight per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PretrainedConfig

from teswap.benchmark.workloads import WORKLOADS
from teswap.precision.table import PRECISIONS


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """The dimensions FLOP counting needs, read once from a HF config."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    # mixture of experts (0: dense): `moe_layers` of the layers hold `num_experts` experts of
    # `moe_intermediate_size` and a router, each token through `experts_per_token` of them
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    moe_layers: int = 0

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ModelShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers, num_attention_heads=heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
            vocab_size=config.vocab_size, tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            **moe_fields(config),
        )

    @property
    def attention_params(self) -> int:
        d, q = self.hidden_size, self.head_dim
        return d * self.num_attention_heads * q * 2 + d * self.num_key_value_heads * q * 2

    @property
    def layer_matmul_params(self) -> int:
        """q, k, v, o and gate, up, down weights of one dense decoder layer (no biases in Llama)."""
        return self.attention_params + 3 * self.hidden_size * self.intermediate_size

    @property
    def moe_layer_params(self) -> int:
        """One MoE layer's attention, router and EVERY expert's gate, up, down."""
        d = self.hidden_size
        return self.attention_params + self.num_experts * (d + 3 * d * self.moe_intermediate_size)

    @property
    def moe_layer_active_params(self) -> int:
        """The weights one token's pass through an MoE layer multiplies: attention, router, its top-k experts."""
        d = self.hidden_size
        experts = self.experts_per_token * 3 * d * self.moe_intermediate_size
        return self.attention_params + self.num_experts * d + experts

    @property
    def dense_layers(self) -> int:
        return self.num_hidden_layers - self.moe_layers

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token: all layers (an MoE layer's top-k experts) plus the lm_head."""
        return (self.dense_layers * self.layer_matmul_params + self.moe_layers * self.moe_layer_active_params
                + self.lm_head_params)

    @property
    def params(self) -> int:
        """All parameters (every expert's), counted once when the embedding is tied to the lm_head."""
        norms = (2 * self.num_hidden_layers + 1) * self.hidden_size
        embeddings = self.lm_head_params * (1 if self.tie_word_embeddings else 2)
        return (self.dense_layers * self.layer_matmul_params + self.moe_layers * self.moe_layer_params + norms
                + embeddings)


def moe_fields(config: PretrainedConfig) -> dict[str, int]:
    """ModelShape's MoE fields of a config (Mixtral's num_local_experts, Qwen3-MoE's num_experts and its
    dense layers); {} for a dense model."""
    experts = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
    if not experts or not getattr(config, "num_experts_per_tok", None):
        return {}
    size = int(getattr(config, "moe_intermediate_size", None) or config.intermediate_size)
    dense = set(getattr(config, "mlp_only_layers", None) or [])
    step = int(getattr(config, "decoder_sparse_step", 1) or 1)
    layers = sum(1 for i in range(config.num_hidden_layers) if i not in dense and (i + 1) % step == 0)
    return {"num_experts": experts, "experts_per_token": int(config.num_experts_per_tok),
            "moe_intermediate_size": size, "moe_layers": layers}


def attention_flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Forward FLOPs of QK^T and AV per token: 4·L·H·Q·T (full T×T, as PaLM counts it)."""
    return 4 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim * seq_len


def flops_per_token(shape: ModelShape, seq_len: int, workload: str, new_tokens: int = 0) -> float:
    """Model FLOPs per processed token for `workload` ("train": fwd+bwd; "prefill": last-token logits;
    "decode": a one-token forward over a cache of the prompt's seq_len tokens and those generated)."""
    if workload == "train":
        return 6 * shape.matmul_params + 3 * attention_flops_per_token(shape, seq_len)
    if workload == "prefill":
        body = shape.matmul_params - shape.lm_head_params
        return 2 * body + attention_flops_per_token(shape, seq_len) + 2 * shape.lm_head_params / seq_len
    if workload == "decode":
        if new_tokens < 2:
            raise ValueError(f"decode FLOPs need new_tokens >= 2, got {new_tokens}")
        mean_context = seq_len + new_tokens / 2  # forwards 1..N-1 see P + 1 .. P + N - 1 keys
        return 2 * shape.matmul_params + 4 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim \
            * mean_context
    raise ValueError(f"unknown workload {workload!r}; choose one of {WORKLOADS}")


@dataclass(frozen=True)
class PeakFlops:
    """Dense (no sparsity) tensor-core peaks in FLOP/s; None where the GPU has no such unit."""

    gpu: str
    bf16: float
    fp8: float | None


# NVIDIA datasheet dense peaks (the table in bench/README.md). Rules are tried in order, first match wins;
# the patterns keep look-alikes out (GH200 is not an H200; H100 NVL and H200 NVL have other peaks).
_PEAK_RULES: tuple[tuple[str, PeakFlops], ...] = (
    (r"\bH100\b.*(HBM3|SXM)", PeakFlops("H100 SXM", 989e12, 1979e12)),
    (r"\bH100\b.*PCIE", PeakFlops("H100 PCIe", 756e12, 1513e12)),
    (r"\bH200\b(?!.*NVL)", PeakFlops("H200 SXM", 989e12, 1979e12)),
    (r"\bA100\b", PeakFlops("A100", 312e12, None)),
    (r"\bL40S\b", PeakFlops("L40S", 362e12, 733e12)),
    (r"\bRTX 4090\b", PeakFlops("RTX 4090", 165e12, 330e12)),
)


def peak_for(device_name: str) -> PeakFlops | None:
    """The peak-table entry for a CUDA device name (torch/NVML spelling), or None when unknown."""
    for pattern, peak in _PEAK_RULES:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


@dataclass(frozen=True, kw_only=True)
class MfuResult:
    flops_per_token: float
    mfu_vs_bf16_peak: float | None
    mfu_vs_precision_peak: float | None
    mfu_null_reason: str | None
    peak_gpu: str | None


def precision_peak(peak: PeakFlops, precision: str) -> tuple[float | None, str | None]:
    """(peak FLOP/s for `precision`, reason when there is none)."""
    if precision == "bf16":
        return peak.bf16, None
    if precision in PRECISIONS and PRECISIONS[precision].is_fp8:
        if peak.fp8 is None:
            return None, f"{peak.gpu} has no FP8 tensor cores"
        return peak.fp8, None
    return None, f"no {precision} peak in the table (BF16 and FP8 only)"


def model_flops_utilization(*, shape: ModelShape, seq_len: int, workload: str, precision: str,
                            tokens_per_s: float | None, device_type: str, device_name: str | None,
                            new_tokens: int = 0) -> MfuResult:
    """FLOPs per token and MFU against the BF16 peak and the precision's peak, null with a reason."""
    flops = flops_per_token(shape, seq_len, workload, new_tokens)
    reasons: list[str] = []
    peak = None
    if tokens_per_s is None:
        reasons.append("no tokens/s (the cell did not finish)")
    elif device_type != "cuda":
        reasons.append(f"no peak table for {device_type} devices")
    else:
        peak = peak_for(device_name or "")
        if peak is None:
            reasons.append(f"GPU {device_name!r} is not in the peak table")
    vs_bf16 = vs_precision = None
    if peak is not None and tokens_per_s is not None:
        achieved = flops * tokens_per_s
        vs_bf16 = achieved / peak.bf16
        value, reason = precision_peak(peak, precision)
        vs_precision = None if value is None else achieved / value
        if reason:
            reasons.append(reason)
    return MfuResult(flops_per_token=flops, mfu_vs_bf16_peak=vs_bf16, mfu_vs_precision_peak=vs_precision,
                     mfu_null_reason="; ".join(reasons) or None, peak_gpu=peak.gpu if peak else None)
