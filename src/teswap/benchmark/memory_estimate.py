"""A cell's peak memory estimated from the model's shape before it runs, so a cell that cannot fit is skipped
with the estimate and the free memory in its record, instead of being killed by the OS or hitting an OOM.

The estimate is one model's peak, what memory.py measures (weights, inputs, gradients, optimizer state,
each op's outputs while they live), in the model dtype's bytes `e` (b batch, s sequence, h hidden, I
intermediate, L layers, V vocabulary, kv x d the key/value heads and head dim):

- weights: the parameters (a tied embedding once; an MoE model's every expert, not only the k a token uses);
- MoE layers: I is the width of a token's k experts together (k x the expert size), plus the router logits
  and the k permuted copies of each token;
- prefill, under no_grad, holds one layer's tensors at a time: b·s·(4h + 3I)·e, plus the last position's logits
  (a TE-layout layer, 3h more: its fused QKV output beside the split views and the normalised input);
- train peaks at the larger of two moments, both over weights, AdamW's two states and every gradient: the
  backward pass, with the saved activations b·s·(L·(6h + 3I)·e + V·(e + 8)) (each layer's inputs, q/k/v,
  gate and up; the logits, their fp32 copy for the loss and its gradient); and AdamW's step, with its
  temporaries: twice the largest parameter on a CPU (one tensor at a time), as much as all the weights on
  a GPU (the multi-tensor path);
- decode: the KV cache over prompt and new tokens, 2·L·b·(s+n)·kv·d·e (one layer's copy more while a
  dynamic cache grows), the prompt's prefill working set and a step's logits in fp32.

FP8 scaling state, TE workspaces and allocator fragmentation are not counted: they are small beside the
weights, and `fits` keeps a margin. On a CPU the estimate is within a few percent of the measured peak
(tests/test_bench_memory.py checks tiny prefill and training at two shapes; bench/README.md, "Memory
before the cell", gives SmolLM2-135M's figures).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import torch

from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.plan import Cell
from teswap.hardware.free_memory import FreeMemory
from teswap.precision.table import get_precision

GIB = 1024**3
FIT_FRACTION = 0.9  # a cell runs when its estimate fits in this share of the free memory
FP32_LOSS_BYTES = 8  # per logit: the fp32 copy the loss takes and its gradient


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Estimated bytes of one model's peak, by what holds them."""

    weights_bytes: int
    gradients_bytes: int = 0
    optimizer_bytes: int = 0
    activations_bytes: int = 0  # the largest working set: activations, or the optimizer step's temporaries
    kv_cache_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes
                + self.kv_cache_bytes)

    def describe(self) -> str:
        """e.g. `2.2 GiB (weights 0.50, gradients 0.50, optimizer 1.00, activations 0.21 GiB)`."""
        parts = [(name.removesuffix("_bytes").replace("_", " "), value) for name, value in asdict(self).items()
                 if value]
        return f"{self.total_bytes / GIB:.2f} GiB (" + ", ".join(f"{n} {v / GIB:.2f}" for n, v in parts) + " GiB)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def shape_of(model_config: dict[str, Any]) -> ModelShape:
    """The ModelShape of a record's "model_config" (teswap.benchmark.records.model_config_fields)."""
    names = ModelShape.__dataclass_fields__
    return ModelShape(**{name: model_config[name] for name in names if name in model_config
                         or names[name].default is dataclasses.MISSING})


def weights_bytes(shape: ModelShape, dtype: torch.dtype) -> int:
    return shape.params * dtype.itemsize


def _largest_parameter(shape: ModelShape) -> int:
    experts = shape.num_experts * 2 * shape.moe_intermediate_size  # HF's 3-D gate_up_proj is one tensor
    return max(shape.vocab_size, shape.intermediate_size, shape.num_attention_heads * shape.head_dim, experts) \
        * shape.hidden_size


def _ffn_width(shape: ModelShape) -> int:
    """The MLP's intermediate width per token: a dense layer's, or an MoE layer's top-k experts' together."""
    return max(shape.intermediate_size if shape.dense_layers else 0,
               shape.experts_per_token * shape.moe_intermediate_size)


def _layer_working_set(shape: ModelShape, tokens: int, swapped: bool = False) -> int:
    """Elements one decoder layer holds at once in a forward without grad (stock's, or a TE-layout layer's)."""
    # an MoE layer also holds the router logits and k copies of each token (permuted), counted in the width
    moe = shape.experts_per_token * shape.hidden_size + shape.num_experts if shape.num_experts else 0
    return tokens * ((7 if swapped else 4) * shape.hidden_size + 3 * _ffn_width(shape) + moe)


def _saved_activations(shape: ModelShape, tokens: int, itemsize: int) -> int:
    """Bytes autograd keeps for the backward of one training step."""
    moe = shape.experts_per_token * shape.hidden_size + shape.num_experts if shape.num_experts else 0
    layers = shape.num_hidden_layers * (6 * shape.hidden_size + 3 * _ffn_width(shape) + moe) * itemsize
    return tokens * (layers + shape.vocab_size * (itemsize + FP32_LOSS_BYTES))


def estimate_cell(cell: Cell, shape: ModelShape) -> MemoryEstimate:
    """The estimated peak of `cell` on its model (see the module docstring for each term)."""
    dtype = get_precision(cell.precision).model_dtype
    itemsize, weights = dtype.itemsize, weights_bytes(shape, dtype)
    tokens = cell.batch * cell.seq_len
    prefill = (_layer_working_set(shape, tokens, cell.backend != "stock") + cell.batch * shape.vocab_size) * itemsize
    if cell.workload == "train":
        on_gpu = torch.device(cell.device).type == "cuda"
        step_temporaries = weights if on_gpu else 2 * _largest_parameter(shape) * itemsize
        return MemoryEstimate(weights_bytes=weights, gradients_bytes=weights, optimizer_bytes=2 * weights,
                              activations_bytes=max(_saved_activations(shape, tokens, itemsize), step_temporaries))
    if cell.workload == "decode":
        layer_cache = 2 * cell.batch * cell.positions * shape.num_key_value_heads * shape.head_dim * itemsize
        logits = cell.batch * shape.vocab_size * 4
        return MemoryEstimate(weights_bytes=weights, activations_bytes=prefill + logits,
                              kv_cache_bytes=(shape.num_hidden_layers + 1) * layer_cache)
    return MemoryEstimate(weights_bytes=weights, activations_bytes=prefill)


def estimate_build(shape: ModelShape, dtype: torch.dtype) -> MemoryEstimate:
    """Building a pair: the stock model, the swapped one and the stock weights mapped to TE layout."""
    return MemoryEstimate(weights_bytes=3 * weights_bytes(shape, dtype))


def estimate_parity(shape: ModelShape, *, model_dtype: torch.dtype, reference_dtype: torch.dtype, batch: int,
                    seq_len: int, batches: int, grads: bool) -> MemoryEstimate:
    """A parity case (teswap.parity.case): stock, swapped and the reference model; the reference's logits and
    hidden states of every batch kept; with `grads`, the reference's gradients kept, one model's gradients
    (and their mapping to HF names) and the reference's saved activations of a training step."""
    ref_size, tokens = reference_dtype.itemsize, batch * seq_len
    kept = batches * tokens * (shape.vocab_size + (shape.num_hidden_layers + 1) * shape.hidden_size) * ref_size
    working = _saved_activations(shape, tokens, ref_size) if grads else \
        _layer_working_set(shape, tokens) * ref_size + tokens * shape.vocab_size * ref_size
    gradients = weights_bytes(shape, reference_dtype) + 2 * weights_bytes(shape, model_dtype) if grads else 0
    return MemoryEstimate(weights_bytes=2 * weights_bytes(shape, model_dtype) + weights_bytes(shape, reference_dtype),
                          gradients_bytes=gradients, activations_bytes=kept + working)


def fits(needed_bytes: int, free: FreeMemory) -> bool:
    """Whether `needed_bytes` fit in FIT_FRACTION of the free memory (unknown free memory: assume they do)."""
    return free.bytes is None or needed_bytes <= FIT_FRACTION * free.bytes


def refusal(what: str, estimate: MemoryEstimate, needed_bytes: int, free: FreeMemory, held: str = "") -> str:
    """Why `what` was not run: its estimate, what it needs beyond what is already held (`held` says what), and
    the free memory."""
    assert free.bytes is not None
    beyond = f"; beyond {held} it needs {needed_bytes / GIB:.2f} GiB" if held else ""
    return (f"{what}: estimated peak {estimate.describe()}{beyond}, more than {FIT_FRACTION:.0%} of the free "
            f"memory, {free.bytes / GIB:.2f} GiB ({free.method})")
