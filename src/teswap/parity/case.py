"""One parity case: the stock and the swapped model at a precision, both against a reference run.

The reference is the stock model with the same (already low-precision-cast) weights run in fp64 on
CPU, fp32 on a GPU, as TE's maintainers advise (REFERENCE.md §5): error(stock@P vs ref) and
error(swapped@P vs ref) are measured side by side and the policy asks the swapped model to be no
worse than stock at P by more than it allows, plus absolute bounds. For the FP8 precisions "stock
at P" is the HF model with every decoder-layer linear run through the same per-tensor FP8 recipe
emulation (teswap.precision.stock), since HF has no FP8 path of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import PretrainedConfig

from teswap.parity.capture import layer_outputs
from teswap.parity.metrics import (
    first_divergent_layer,
    grad_metrics,
    grad_summary,
    layer_errors,
    logits_metrics,
    loss_difference,
    token_match_rate,
    worst_grad,
)
from teswap.parity.policy_files import get_policy
from teswap.parity.rule import Policy, Verdict, evaluate
from teswap.precision.runtime import calibrate, require_precision, swapped_autocast
from teswap.precision.stock import stock_autocast
from teswap.precision.table import Precision
from teswap.store.records import ParityRecord
from teswap.swap.mapping import te_to_hf_state_dict
from teswap.swap.pair import Pair, build_pair

# A swapped layer "diverges" when its hidden-state error exceeds 4x the stock model's error at the same
# layer and precision (metrics.first_divergent_layer), and this floor (so exact-zero stock errors in fp32
# do not trip it).
LAYER_FLOOR = {"fp32": 1e-5, "bf16": 1e-2}
LAYER_FLOOR_FP8 = 5e-2
ROW_MULTIPLE = 16  # greedy decoding right-pads to this so FP8 GEMMs keep TE's dimension rules


@dataclass(frozen=True, kw_only=True)
class ParityCase:
    """What to compare: model source, backend, precision, input shape, and which checks to run."""

    source: str | PretrainedConfig
    backend: str = "torch"
    precision: str = "fp32"
    seq_len: int = 128
    batch: int = 2
    seed: int = 0
    device: str = "cpu"
    fuse_qkv: bool = False
    gen_tokens: int = 8
    grads: bool = True
    calibration_steps: int = 2  # grad-enabled FP8 forwards before measuring (DelayedScaling scales)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.gen_tokens < 0 or self.calibration_steps < 0:
            raise ValueError("gen_tokens and calibration_steps must be >= 0")

    @property
    def source_name(self) -> str:
        return self.source if isinstance(self.source, str) else "config"

    def as_dict(self) -> dict:
        fields = asdict(self) | {"source": None}
        return {"model": self.source_name, **{k: v for k, v in fields.items() if k != "source"}}


@dataclass(frozen=True, kw_only=True)
class ParityReport:
    """Metrics of both models against the reference, per-layer errors, and the verdict."""

    case: ParityCase
    policy: Policy
    verdict: Verdict
    reference_dtype: str
    swapped: dict[str, float]
    stock: dict[str, float]
    swapped_layer_errors: list[float]
    stock_layer_errors: list[float]
    first_divergent_layer: int | None
    worst_grad: str | None = None
    generation: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict.passed and self.first_divergent_layer is None

    def record(self) -> ParityRecord:
        """This case's parity record for the results store."""
        return ParityRecord(
            case=self.case.as_dict(), policy={"name": self.policy.name, "version": self.policy.version},
            passed=self.passed, status="passed" if self.passed else "failed",
            reason=None if self.passed else self.failure_summary(), reference_dtype=self.reference_dtype,
            metrics={"swapped": self.swapped, "stock": self.stock},
            layer_errors={"swapped": self.swapped_layer_errors, "stock": self.stock_layer_errors},
            first_divergent_layer=self.first_divergent_layer, worst_grad=self.worst_grad,
            verdict_rows=[asdict(row) for row in self.verdict.rows], skipped_bounds=list(self.verdict.skipped),
        )

    def failure_summary(self) -> str:
        parts = [f"{row.bound}={row.value:.4g} (limit {row.limit:.4g})" for row in self.verdict.failures]
        if self.first_divergent_layer is not None:
            parts.append(f"first diverging layer {self.first_divergent_layer}")
        return "; ".join(parts) or "no bound was checked"


def reference_dtype_for(device: torch.device) -> torch.dtype:
    """fp64 where affordable (CPU), fp32 on a GPU."""
    return torch.float64 if device.type == "cpu" else torch.float32


def run_parity_case(case: ParityCase, policy: Policy | None = None) -> ParityReport:
    """Build the pair at the case's precision and measure both models against the reference."""
    precision = require_precision(case.precision, case.backend, case.device)
    policy = policy or get_policy(case.precision)
    pair = build_pair(case.source, seed=case.seed, backend=case.backend, dtype=precision.model_dtype,
                      device=case.device, fuse_qkv=case.fuse_qkv)
    ref_dtype = reference_dtype_for(pair.device)
    reference = copy.deepcopy(pair.stock).to(dtype=ref_dtype)  # type: ignore[call-arg]  # transformers wraps .to
    ids = _input_ids(pair, case)
    contexts = {"stock": stock_autocast(pair.stock, precision.name),
                "swapped": _swapped_context(precision, case.backend)}
    models = {"stock": pair.stock, "swapped": pair.swapped}
    for name, model in models.items():
        calibrate(model, ids, precision.name, contexts[name], steps=case.calibration_steps, backward=case.grads)
    ref_logits, ref_layers = _forward(reference, ids, nullcontext)
    results = {name: _forward(model, ids, contexts[name]) for name, model in models.items()}
    metrics = {name: logits_metrics(logits, ref_logits).as_dict() for name, (logits, _) in results.items()}
    layers = {name: [e.rel_error for e in layer_errors(hidden, ref_layers)] for name, (_, hidden) in results.items()}
    worst = _add_loss_and_grads(case, pair, reference, ids, contexts, metrics) if case.grads else None
    generation = _add_generation(case, reference, models, ids, contexts, metrics)
    verdict = evaluate(policy, metrics["swapped"], metrics["stock"], missing="skip")
    floor = LAYER_FLOOR.get(precision.name, LAYER_FLOOR_FP8)
    divergent = first_divergent_layer(layers["swapped"], layers["stock"], floor=floor)
    if divergent is None and precision.is_fp8:
        divergent = _localise_without_fp8(models, ids, ref_layers)
    ref_name = str(ref_dtype).removeprefix("torch.")
    return ParityReport(case=case, policy=policy, verdict=verdict, reference_dtype=ref_name,
                        swapped=metrics["swapped"], stock=metrics["stock"], swapped_layer_errors=layers["swapped"],
                        stock_layer_errors=layers["stock"], first_divergent_layer=divergent, worst_grad=worst,
                        generation=generation)


Context = Callable[[], AbstractContextManager]


def _localise_without_fp8(models: Mapping[str, nn.Module], ids: torch.Tensor,
                          ref_layers: list[torch.Tensor]) -> int | None:
    """Look for the diverging layer again with FP8 off (bf16 weights as built).

    FP8 noise (~4e-2 per layer) can hide a wrong RoPE or a half-swapped MLP in the hidden states
    while the loss and gradients still show it; without the quantization the same fault stands out.
    """
    errors = {name: [e.rel_error for e in layer_errors(_forward(model, ids, nullcontext)[1], ref_layers)]
              for name, model in models.items()}
    return first_divergent_layer(errors["swapped"], errors["stock"], floor=LAYER_FLOOR["bf16"])


def _swapped_context(precision: Precision, backend: str) -> Context:
    return lambda: swapped_autocast(precision.name, backend)


def _input_ids(pair: Pair, case: ParityCase) -> torch.Tensor:
    generator = torch.Generator().manual_seed(case.seed + 1)
    ids = torch.randint(0, pair.config.vocab_size, (case.batch, case.seq_len), generator=generator)
    return ids.to(pair.device)


@torch.no_grad()
def _forward(model: nn.Module, ids: torch.Tensor, context: Context) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with layer_outputs(model) as hidden, context():
        logits = model(ids).logits
    return logits, hidden


def _loss_and_grads(model: nn.Module, ids: torch.Tensor, context: Context) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        with context():
            loss = model(ids, labels=ids).loss
        loss.backward()  # outside the autocast, as TE's users do; FP8 state was saved in forward
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.item(), grads
    finally:
        model.eval()


def _add_loss_and_grads(case, pair, reference, ids, contexts, metrics) -> str | None:
    ref_loss, ref_grads = _loss_and_grads(reference, ids, nullcontext)
    worst_name = None
    for name, model in (("stock", pair.stock), ("swapped", pair.swapped)):
        loss, grads = _loss_and_grads(model, ids, contexts[name])
        if name == "swapped":
            grads = te_to_hf_state_dict(grads, pair.config)
        per_param = grad_metrics(grads, ref_grads)
        metrics[name] |= {"loss_diff": loss_difference(loss, ref_loss), **grad_summary(per_param)}
        if name == "swapped":
            worst_name = worst_grad(per_param).parameter
    return worst_name


def _add_generation(case, reference, models, ids, contexts, metrics) -> dict[str, dict[str, float]]:
    if case.gen_tokens == 0:
        return {}
    prompt = ids[:1, : min(16, case.seq_len)]
    ref_tokens = greedy_tokens(reference, prompt, case.gen_tokens, nullcontext)
    generation = {}
    for name, model in models.items():
        match = token_match_rate(greedy_tokens(model, prompt, case.gen_tokens, contexts[name]), ref_tokens)
        generation[name] = match.as_dict()
        metrics[name] |= {"prefix_match_rate": match.prefix_match_rate, "overall_match_rate": match.overall_match_rate}
    return generation


@torch.no_grad()
def greedy_tokens(model: nn.Module, prompt: torch.Tensor, new_tokens: int, context: Context) -> torch.Tensor:
    """Greedy decoding without a KV cache, right-padding each step to a multiple of 16 rows.

    Right padding cannot change a causal model's logits at earlier positions; it keeps every step's
    GEMMs on TE's FP8 dimension rules (batch x seq divisible by 8/16).
    """
    tokens = prompt
    for _ in range(new_tokens):
        length = tokens.shape[1]
        padded = torch.nn.functional.pad(tokens, (0, -length % ROW_MULTIPLE), value=0)
        with context():
            logits = model(padded).logits
        tokens = torch.cat([tokens, logits[:, length - 1].argmax(-1, keepdim=True)], dim=1)
    return tokens[:, prompt.shape[1]:]
