"""One parity case: the stock and the swapped model at a precision, both against a reference run.

The reference is the stock model with the same (already low-precision-cast) weights run in fp64 on
CPU, fp32 on a GPU, as TE's maintainers advise (REFERENCE.md §5). Both models see the same inputs
(real text when the model has a tokenizer, teswap.parity.inputs): `batches` batches for logits,
per-layer hidden states and perplexity, the first one for loss and gradients, and `gen_prompts`
prompts for greedy decoding. The policy's relative bounds judge the swap against stock on paired
per-position samples (teswap.parity.rule); its absolute bounds judge the precision on this model.
For the FP8 precisions "stock at P" is the HF model with every decoder-layer linear run through the
same per-tensor FP8 recipe emulation (teswap.precision.stock), since HF has no FP8 path of its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from teswap.errors import UnsupportedInputError
from teswap.parity.capture import layer_outputs
from teswap.parity.generation import Context, greedy_continuations, matched_tokens, nullcontext_factory
from teswap.parity.inputs import CaseInputs, case_inputs
from teswap.parity.metrics import (
    TokenErrors,
    first_divergent_layer,
    grad_comparison,
    loss_difference,
    perplexity,
    robust_scale,
    token_errors,
    token_nll,
)
from teswap.parity.paired import PairedSamples, position_blocks
from teswap.parity.policy_files import get_policy
from teswap.parity.rule import Policy, Verdict, evaluate
from teswap.precision.runtime import calibrate, recipe_record, require_precision, swapped_autocast
from teswap.precision.stock import stock_autocast
from teswap.store.records import ParityRecord
from teswap.swap.mapping import te_to_hf_state_dict
from teswap.swap.pair import Pair, build_pair
from teswap.swap.positions import beyond_limit
from teswap.swap.sources import resolve_source

# A swapped layer "diverges" when its hidden-state error exceeds 4x the stock model's error at the same
# layer and precision (metrics.first_divergent_layer), and this floor (so exact-zero stock errors in fp32
# do not trip it).
LAYER_FLOOR = {"fp32": 1e-5, "bf16": 1e-2}
LAYER_FLOOR_FP8 = 5e-2
MODELS = ("stock", "swapped")


@dataclass(frozen=True, kw_only=True)
class ParityCase:
    """What to compare: model source, backend, precision, input shape, and which checks to run."""

    source: str | PretrainedConfig
    backend: str = "torch"
    precision: str = "fp32"
    seq_len: int = 128
    batch: int = 2
    batches: int = 2  # distinct input batches: more text, tighter intervals
    seed: int = 0
    device: str = "cpu"
    fuse_qkv: bool = False
    gen_prompts: int = 16
    gen_tokens: int = 24
    grads: bool = True
    calibration_steps: int = 2  # grad-enabled FP8 forwards before measuring (DelayedScaling scales)
    beyond_max_positions: bool = False  # a seq_len past the model's max_position_embeddings, asked for
    stands_for: str | None = None  # the timed model whose verdict this case gives, when its own cannot run here
    experts: str | None = None  # an MoE family's expert implementation ("grouped", the default, or "hf")

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch", "batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.gen_tokens, self.gen_prompts, self.calibration_steps) < 0:
            raise ValueError("gen_tokens, gen_prompts and calibration_steps must be >= 0")

    @property
    def source_name(self) -> str:
        return self.source if isinstance(self.source, str) else "config"

    def as_dict(self) -> dict:
        """The record's "case"; `beyond_max_positions` and `stands_for` only where set, so other cases read as
        before."""
        fields = asdict(self)
        unset = {"source", *(name for name in ("beyond_max_positions", "stands_for", "experts") if not fields[name])}
        return {"model": self.source_name, **{k: v for k, v in fields.items() if k not in unset}}


@dataclass(frozen=True, kw_only=True)
class ParityReport:
    """Metrics of both models against the reference, per-layer errors, and the two verdicts."""

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
    perplexity: dict[str, float] = field(default_factory=dict)  # reference, stock, swapped
    generation: dict[str, float] = field(default_factory=dict)  # mean matched tokens, prompts, new tokens
    inputs: str = ""
    routing: dict[str, Any] = field(default_factory=dict)  # MoE: teswap.parity.routing, swapped against stock

    @property
    def passed(self) -> bool:
        """The swap verdict: no relative bound confidently violated and no diverging layer."""
        return self.verdict.passed and self.first_divergent_layer is None

    @property
    def precision_verdict(self) -> str:
        """"fit" when stock meets every absolute bound of the precision; "lossy" when it does not."""
        return "fit" if self.verdict.precision_passed else "lossy"

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
            precision_verdict=self.precision_verdict,
            precision_rows=[asdict(row) for row in self.verdict.precision_rows],
            perplexity=self.perplexity, generation=self.generation, inputs=self.inputs,
            recipe=recipe_record(self.case.precision, self.case.backend), routing=self.routing or None,
        )

    def failure_summary(self) -> str:
        parts = [f"{row.bound}={row.value:.4g} {row.failure} (limit {row.limit:.4g})" for row in self.verdict.failures]
        if self.first_divergent_layer is not None:
            parts.append(f"first diverging layer {self.first_divergent_layer}")
        return "; ".join(parts) or "no bound was checked"


def reference_dtype_for(device: torch.device, precision: str = "fp32") -> torch.dtype:
    """fp64 for an fp32 case on the CPU (fp32 rounding is what it measures); fp32 otherwise.

    bf16 and FP8 errors (1e-3 .. 1e-1) are four orders of magnitude above fp32's rounding, so an fp32
    reference measures them as exactly as fp64 would, at a third of the CPU time.
    """
    return torch.float64 if device.type == "cpu" and precision == "fp32" else torch.float32


class ReferenceRuns:
    """The reference model of one pair at one dtype, one case's inputs, and what it gives on them, each run once.

    bf16 and the FP8 recipes share a pair (bf16 weights) and an fp32 reference, and a case's inputs depend
    only on its shape and seed, so the reference's forwards, gradients and greedy continuations of the
    first such case serve the others (and the FP8 cases' second look at the first batch). Held: the
    reference's logits and hidden states per batch, its gradients and continuations.
    """

    def __init__(self, pair: Pair, dtype: torch.dtype, inputs_key: tuple, inputs: CaseInputs) -> None:
        self.pair, self.dtype, self.inputs_key, self.inputs = pair, dtype, inputs_key, inputs
        self.model = copy.deepcopy(pair.stock).to(dtype=dtype)  # type: ignore[call-arg]  # transformers wraps .to
        experts = getattr(self.model.config, "_experts_implementation", None)
        if dtype == torch.float64 and experts not in (None, "eager"):
            # MoE experts: HF's grouped_mm kernel takes no fp64; its eager loop is the same math
            self.model.config._experts_implementation = "eager"
        self._forwards: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self._grads: tuple[float, dict[str, torch.Tensor]] | None = None
        self._continuations: dict[int, torch.Tensor] = {}

    def serves(self, pair: Pair, dtype: torch.dtype, inputs_key: tuple) -> bool:
        return self.pair is pair and self.dtype == dtype and self.inputs_key == inputs_key

    def forward(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and per-layer hidden states of input batch `index`."""
        if index not in self._forwards:
            self._forwards[index] = _forward(self.model, self.inputs.batches[index], nullcontext)
        logits, hidden = self._forwards[index]
        return logits, list(hidden)

    def loss_and_grads(self) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss and every parameter's gradient on the first input batch."""
        if self._grads is None:
            self._grads = _loss_and_grads(self.model, self.inputs.batches[0], nullcontext)
        return self._grads

    def continuations(self, new_tokens: int) -> torch.Tensor:
        """[prompts, new_tokens] greedy continuation of the inputs' prompts."""
        if new_tokens not in self._continuations:
            self._continuations[new_tokens] = greedy_continuations(self.model, self.inputs.prompts, new_tokens,
                                                                   nullcontext_factory)
        return self._continuations[new_tokens]


class ReferenceCache:
    """The last case's ReferenceRuns, handed to the next case when it has the same pair, dtype and inputs."""

    def __init__(self) -> None:
        self.runs: ReferenceRuns | None = None

    def clear(self) -> None:
        self.runs = None

    def runs_for(self, pair: Pair, dtype: torch.dtype, case: ParityCase) -> ReferenceRuns:
        key = (case.seq_len, case.batch, case.batches, case.seed, case.gen_prompts if case.gen_tokens else 0)
        if self.runs is None or not self.runs.serves(pair, dtype, key):
            self.runs = None  # one reference in memory at a time
            self.runs = ReferenceRuns(pair, dtype, key, _inputs(case, pair))
        return self.runs


def run_parity_case(case: ParityCase, policy: Policy | None = None, pair: Pair | None = None,
                    references: ReferenceCache | None = None) -> ParityReport:
    """Measure both models of the case's pair against the reference (the pair is built unless given).

    A given pair must be the case's: same source, backend, model dtype and QKV layout (cases at bf16
    and the FP8 recipes can share one; nothing here changes its weights). A given ReferenceCache hands
    back the reference runs of an earlier case with the same pair, reference dtype and inputs.
    """
    precision = require_precision(case.precision, case.backend, case.device)
    refusal = beyond_limit(resolve_source(case.source).config, case.seq_len, model=case.source_name,
                           what=f"parity seq_len {case.seq_len}")
    if refusal and not case.beyond_max_positions:
        raise UnsupportedInputError(refusal)
    policy = policy or get_policy(case.precision)
    pair = pair or build_pair(case.source, seed=case.seed, backend=case.backend, dtype=precision.model_dtype,
                              device=case.device, fuse_qkv=case.fuse_qkv, experts=case.experts)
    _check_pair(pair, case, precision.model_dtype)
    ref_dtype = reference_dtype_for(pair.device, precision.name)
    reference = (references or ReferenceCache()).runs_for(pair, ref_dtype, case)
    inputs = reference.inputs
    models = {"stock": pair.stock, "swapped": pair.swapped}
    contexts = {"stock": stock_autocast(pair.stock, precision.name),
                "swapped": lambda: swapped_autocast(precision.name, case.backend)}
    for name, model in models.items():
        calibrate(model, inputs.batches[0], precision.name, contexts[name], steps=case.calibration_steps,
                  backward=case.grads)
    forward = _compare_forwards(reference, models, contexts, inputs)
    metrics = {name: forward.errors[name].summary(forward.scale) for name in MODELS}
    samples = _samples(forward, case)
    worst = _add_loss_and_grads(pair, reference, inputs.batches[0], contexts, metrics) if case.grads else None
    generation = _add_generation(case, reference, models, contexts, inputs, metrics, samples)
    verdict = evaluate(policy, metrics["swapped"], metrics["stock"], samples=samples, missing="skip")
    divergent = first_divergent_layer(forward.layers["swapped"], forward.layers["stock"],
                                      floor=LAYER_FLOOR.get(precision.name, LAYER_FLOOR_FP8))
    if divergent is None and precision.is_fp8:
        divergent = _localise_without_fp8(models, reference)
    routing = _routing(pair, inputs.batches[0], contexts)
    return ParityReport(case=case, policy=policy, verdict=verdict, routing=routing,
                        reference_dtype=str(ref_dtype).removeprefix("torch."), swapped=metrics["swapped"],
                        stock=metrics["stock"], swapped_layer_errors=forward.layers["swapped"],
                        stock_layer_errors=forward.layers["stock"], first_divergent_layer=divergent, worst_grad=worst,
                        perplexity=forward.perplexity, generation=generation, inputs=inputs.description)


def _routing(pair: Pair, ids: torch.Tensor, contexts: Mapping[str, Context]) -> dict[str, Any]:
    """An MoE pair's routing, each model at the case's precision (empty for a dense family)."""
    if pair.experts is None:
        return {}
    from teswap.parity.routing import routing_report

    report = routing_report(pair.stock, pair.swapped, ids, contexts=contexts)
    return {**asdict(report), "experts": pair.experts}


def _check_pair(pair: Pair, case: ParityCase, dtype: torch.dtype) -> None:
    given = (pair.backend, pair.dtype, pair.fuse_qkv, pair.device.type)
    wanted = (case.backend, dtype, case.fuse_qkv, torch.device(case.device).type)
    if given != wanted or (isinstance(case.source, str) and pair.source != resolve_source(case.source).name):
        raise ValueError(f"the given pair ({pair.source}, {given}) is not this case's ({case.source_name}, {wanted})")


def _inputs(case: ParityCase, pair: Pair) -> CaseInputs:
    resolved = resolve_source(case.source)
    return case_inputs(resolved.load_tokenizer(), vocab_size=pair.config.vocab_size, batches=case.batches,
                       batch=case.batch, seq_len=case.seq_len, gen_prompts=case.gen_prompts if case.gen_tokens else 0,
                       seed=case.seed, device=pair.device)


@dataclass(frozen=True, kw_only=True)
class _Forwards:
    """What the forward passes over all batches give: per-position errors, layer errors, perplexities."""

    errors: dict[str, TokenErrors]
    layers: dict[str, list[float]]
    perplexity: dict[str, float]
    scale: float  # robust_rel's scale: the 99.9th percentile of |reference logits| (first batch)
    blocks: torch.Tensor


@torch.no_grad()
def _compare_forwards(reference: ReferenceRuns, models: Mapping[str, nn.Module], contexts: Mapping[str, Context],
                      inputs: CaseInputs) -> _Forwards:
    errors: dict[str, list[TokenErrors]] = {name: [] for name in MODELS}
    layer_sums = {name: torch.zeros(0) for name in MODELS}
    nll: dict[str, list[torch.Tensor]] = {name: [] for name in ("reference", *MODELS)}
    scale, blocks = 0.0, []
    for index, ids in enumerate(inputs.batches):
        ref_logits, ref_hidden = reference.forward(index)
        scale = scale or robust_scale(ref_logits)
        nll["reference"].append(token_nll(ref_logits, ids))
        batch, positions = ids.shape
        blocks.append(position_blocks(batch, positions, offset=index * _blocks_per_batch(ids)))
        for name, model in models.items():
            logits, hidden = _forward(model, ids, contexts[name])
            errors[name].append(token_errors(logits, ref_logits))
            nll[name].append(token_nll(logits, ids))
            layer_sums[name] = _layer_sums(layer_sums[name], hidden, ref_hidden)
    layers = {name: [math.sqrt(e / r) if r else 0.0 for e, r in sums.tolist()] for name, sums in layer_sums.items()}
    return _Forwards(errors={name: TokenErrors.concat(parts) for name, parts in errors.items()}, layers=layers,
                     perplexity={name: perplexity(torch.cat(values)) for name, values in nll.items()}, scale=scale,
                     blocks=torch.cat(blocks))


def _blocks_per_batch(ids: torch.Tensor) -> int:
    return int(position_blocks(*ids.shape).max()) + 1


def _layer_sums(sums: torch.Tensor, hidden: list[torch.Tensor], ref_hidden: list[torch.Tensor]) -> torch.Tensor:
    """Running [layers, 2] sums of ‖h − r‖² and ‖r‖² per decoder layer."""
    batch = torch.tensor([[(h.double() - r.double()).pow(2).sum().item(), r.double().pow(2).sum().item()]
                          for h, r in zip(hidden, ref_hidden, strict=True)], dtype=torch.float64)
    return batch if sums.numel() == 0 else sums + batch


def _samples(forward: _Forwards, case: ParityCase) -> dict[str, PairedSamples]:
    """Paired per-position samples of the metrics the relative bounds judge by bootstrap."""
    swapped, stock = forward.errors["swapped"], forward.errors["stock"]
    return {
        "rel_rms": PairedSamples(swapped=swapped.sq_error, stock=stock.sq_error, blocks=forward.blocks,
                                 denominator=stock.ref_sq, finish=torch.sqrt),
        "kl_div": PairedSamples(swapped=swapped.kl, stock=stock.kl, blocks=forward.blocks),
        "top1_agreement": PairedSamples(swapped=swapped.top1_agree, stock=stock.top1_agree, blocks=forward.blocks),
    }


def _localise_without_fp8(models: Mapping[str, nn.Module], reference: ReferenceRuns) -> int | None:
    """Look for the diverging layer again with FP8 off (bf16 weights as built).

    FP8 noise (~4e-2 per layer) can hide a wrong RoPE or a half-swapped MLP in the hidden states
    while the loss and gradients still show it; without the quantization the same fault stands out.
    """
    ids = reference.inputs.batches[0]
    _, ref_hidden = reference.forward(0)
    sums = {name: _layer_sums(torch.zeros(0), _forward(model, ids, nullcontext)[1], ref_hidden)
            for name, model in models.items()}
    errors = {name: [math.sqrt(e / r) if r else 0.0 for e, r in s.tolist()] for name, s in sums.items()}
    return first_divergent_layer(errors["swapped"], errors["stock"], floor=LAYER_FLOOR["bf16"])


@torch.no_grad()
def _forward(model: nn.Module, ids: torch.Tensor, context: Context) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with layer_outputs(model) as hidden, context():
        logits = model(ids, use_cache=False).logits
    return logits, hidden


def _loss_and_grads(model: nn.Module, ids: torch.Tensor, context: Context) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        with context():
            loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()  # outside the autocast, as TE's users do; FP8 state was saved in forward
        # set_to_none drops the model's hold on each .grad: the tensors are ours without a copy.
        grads = {name: p.grad.detach() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.item(), grads
    finally:
        model.eval()


def _add_loss_and_grads(pair: Pair, reference: ReferenceRuns, ids: torch.Tensor, contexts: Mapping[str, Context],
                        metrics: dict[str, dict[str, float]]) -> str:
    """Loss difference and global gradient error of both models; the swapped model's worst parameter."""
    ref_loss, ref_grads = reference.loss_and_grads()
    worst_name = ""
    for name, model in (("stock", pair.stock), ("swapped", pair.swapped)):
        loss, grads = _loss_and_grads(model, ids, contexts[name])
        if name == "swapped":
            grads = te_to_hf_state_dict(grads, pair.config, gradients=True)
        summary, worst = grad_comparison(grads, ref_grads)
        if name == "swapped":
            worst_name = worst.parameter  # a diagnosis, not a bound
        metrics[name] |= {"loss_diff": loss_difference(loss, ref_loss), **summary}
    return worst_name


def _add_generation(case: ParityCase, reference: ReferenceRuns, models: Mapping[str, nn.Module],
                    contexts: Mapping[str, Context], inputs: CaseInputs, metrics: dict[str, dict[str, float]],
                    samples: dict[str, PairedSamples]) -> dict[str, float]:
    """Greedy continuations of the prompts: matched prefix per prompt for stock and swapped."""
    if not case.gen_tokens or not case.gen_prompts:
        return {}
    expected = reference.continuations(case.gen_tokens)
    matched = matched_tokens(dict(models), dict(contexts), expected, inputs.prompts, case.gen_tokens)
    for name in MODELS:
        metrics[name]["prefix_match_rate"] = matched[name].mean().item() / case.gen_tokens
    samples["prefix_match_rate"] = PairedSamples(
        swapped=matched["swapped"] / case.gen_tokens, stock=matched["stock"] / case.gen_tokens,
        blocks=torch.arange(matched["stock"].numel()))
    return {"prompts": inputs.prompts.shape[0], "new_tokens": case.gen_tokens,
            "stock_matched_tokens": matched["stock"].mean().item(),
            "swapped_matched_tokens": matched["swapped"].mean().item()}
