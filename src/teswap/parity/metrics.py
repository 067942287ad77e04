"""How far a low-precision run is from a reference run: pure functions on tensors, float64 inside.

Every function takes (test, ref) in that order, computes in float64 on the tensors' own device, and
returns Python floats (or frozen dataclasses of them). Nothing here knows about models or policies;
`teswap.parity.rule` names the same metrics (see each dataclass's `as_dict`) and judges them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from teswap.errors import TeswapError

# Scale for robust_rel: the nearest-rank 99.9th percentile of |ref|. max|ref| would let one outlier
# logit hide large errors elsewhere; mean|ref| is dominated by the many near-zero logits and would
# make the ratio depend on vocabulary size. The 99.9th percentile tracks "the size of a large logit"
# and moves little when a handful of entries are extreme.
ROBUST_SCALE_QUANTILE = 0.999
# top5_agreement: is test's top-1 token among ref's TOP_K_AGREEMENT most likely tokens?
TOP_K_AGREEMENT = 5


class MetricInputError(TeswapError, ValueError):
    """Tensors handed to a metric cannot be compared (shapes, emptiness, lengths)."""


class GradKeysMismatchError(MetricInputError, KeyError):
    """The two gradient dicts name different parameters."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, kw_only=True)
class LogitsMetrics:
    """Error of test logits against reference logits; positions are all dims but the last (vocab)."""

    max_abs: float  # max |test - ref|, logit units
    mean_abs: float  # mean |test - ref|, logit units
    robust_rel: float  # max_abs / 99.9th percentile of |ref|
    cosine: float  # cosine similarity of the flattened tensors
    sqnr_db: float  # 20 log10(||ref|| / ||ref - test||); inf when equal
    kl_div: float  # mean over positions of KL(softmax(ref) || softmax(test)), nats
    top1_agreement: float  # fraction of positions where argmax(test) == argmax(ref)
    top5_agreement: float  # fraction of positions where argmax(test) is in ref's top 5

    def as_dict(self) -> dict[str, float]:
        """The metrics keyed by the names policies use."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class GradMetric:
    """Error of one parameter's gradient against the reference gradient."""

    parameter: str
    rel_norm_error: float  # ||g - r|| / ||r||
    cosine: float
    max_abs: float


@dataclass(frozen=True, kw_only=True)
class LayerError:
    """Error of one decoder layer's output hidden states against the reference."""

    layer: int
    rel_error: float  # ||h - r|| / ||r|| over the whole output tensor
    max_abs: float


@dataclass(frozen=True, kw_only=True)
class TokenMatch:
    """How closely greedy generations agree; rates are fractions in [0, 1]."""

    prefix_match_rate: float  # mean over sequences of (tokens before the first mismatch) / length
    overall_match_rate: float  # equal tokens / all tokens, mismatches or not
    first_mismatch: tuple[int | None, ...]  # per sequence, index of the first mismatch, None if none

    def as_dict(self) -> dict[str, float]:
        """The two rates keyed by the names policies use."""
        return {"prefix_match_rate": self.prefix_match_rate, "overall_match_rate": self.overall_match_rate}


def logits_metrics(test: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> LogitsMetrics:
    """All logits metrics of `test` against `ref` (same shape, vocab last).

    `mask`: optional bool over the positions (the shape without the vocab dim), True = include; pad
    positions of a padded batch are left out this way.
    """
    _check_same_shape("logits", test, ref)
    test, ref = _included(test, mask, "logits"), _included(ref, mask, "logits")
    if test.dim() == 0 or test.numel() == 0:
        raise MetricInputError(
            f"logits must have a vocab dimension and be non-empty; got shape {tuple(test.shape)}")
    test64, ref64 = _f64(test), _f64(ref)
    abs_error = (test64 - ref64).abs()
    max_abs = abs_error.max().item()
    return LogitsMetrics(
        max_abs=max_abs,
        mean_abs=abs_error.mean().item(),
        robust_rel=_ratio(max_abs, _robust_scale(ref64)),
        cosine=_cosine(test64, ref64),
        sqnr_db=_sqnr_db(test64, ref64),
        kl_div=_kl_div_nats(test64, ref64),
        top1_agreement=_top1_agreement(test64, ref64),
        top5_agreement=_top_k_agreement(test64, ref64, TOP_K_AGREEMENT),
    )


def loss_difference(test_loss: torch.Tensor | float, ref_loss: torch.Tensor | float) -> float:
    """|test_loss - ref_loss|, in the losses' units (nats for cross-entropy)."""
    return abs(float(test_loss) - float(ref_loss))


def grad_metrics(test_grads: Mapping[str, torch.Tensor], ref_grads: Mapping[str, torch.Tensor]
                 ) -> dict[str, GradMetric]:
    """Per parameter, the gradient's relative norm error and cosine against the reference."""
    if test_grads.keys() != ref_grads.keys():
        missing = sorted(ref_grads.keys() - test_grads.keys())
        extra = sorted(test_grads.keys() - ref_grads.keys())
        raise GradKeysMismatchError(
            f"gradient keys differ: test lacks {_few(missing)}, test has extra {_few(extra)}")
    return {name: _grad_metric(name, test_grads[name], ref_grads[name]) for name in ref_grads}


def worst_grad(metrics: Mapping[str, GradMetric]) -> GradMetric:
    """The parameter with the largest relative norm error (NaN counts as largest)."""
    if not metrics:
        raise MetricInputError("no gradient metrics to choose from")
    return max(metrics.values(), key=lambda m: math.inf if math.isnan(m.rel_norm_error) else m.rel_norm_error)


def grad_summary(metrics: Mapping[str, GradMetric]) -> dict[str, float]:
    """Worst relative norm error and lowest cosine over parameters, keyed by the names policies use."""
    cosines = [m.cosine for m in metrics.values()]
    lowest_cosine = math.nan if any(math.isnan(c) for c in cosines) else min(cosines, default=math.nan)
    return {"grad_rel_norm_error": worst_grad(metrics).rel_norm_error, "grad_cosine": lowest_cosine}


def layer_errors(test_hidden: Sequence[torch.Tensor], ref_hidden: Sequence[torch.Tensor],
                 mask: torch.Tensor | None = None) -> list[LayerError]:
    """Per layer (index i = the i-th tensor given), the relative and max abs error of its output.

    `mask`: optional bool over the positions ([batch, seq] for [batch, seq, hidden]), True = include.
    """
    if len(test_hidden) != len(ref_hidden):
        raise MetricInputError(f"layer counts differ: test has {len(test_hidden)}, ref has {len(ref_hidden)}")
    errors = []
    for layer, (test, ref) in enumerate(zip(test_hidden, ref_hidden, strict=True)):
        _check_same_shape(f"layer {layer} hidden states", test, ref)
        what = f"layer {layer} hidden states"
        test64, ref64 = _f64(_included(test, mask, what)), _f64(_included(ref, mask, what))
        max_abs = (test64 - ref64).abs().max().item() if test64.numel() else 0.0
        errors.append(LayerError(layer=layer, rel_error=_rel_norm_error(test64, ref64), max_abs=max_abs))
    return errors


def first_divergent_layer(swapped: Sequence[LayerError] | Sequence[float],
                          stock: Sequence[LayerError] | Sequence[float], *, floor: float,
                          factor: float = 4.0) -> int | None:
    """The first layer where the swapped model's error exceeds `factor` x stock's there, and `floor`.

    Both are errors against the same reference at the same precision, so stock's curve is the noise
    that precision makes at each layer: a wrong weight in layer k multiplies the swapped error at k at
    once (gate/up swapped in layer 4 of a bf16 tiny Llama: 7.6e-3 -> 5.9e-2 against stock's 7.6e-3),
    while a faithful swap tracks stock to within a few tens of percent. `floor` keeps an exact stock
    (error 0 in fp32) from flagging rounding noise. A non-finite error diverges. Returns the
    LayerError's `layer`, or the position when plain floats are given.
    """
    if len(swapped) != len(stock):
        raise MetricInputError(f"{len(swapped)} swapped layer errors but {len(stock)} stock ones")
    for position, (ours, theirs) in enumerate(zip(swapped, stock, strict=True)):
        layer, error = (ours.layer, ours.rel_error) if isinstance(ours, LayerError) else (position, _as_float(ours))
        baseline = theirs.rel_error if isinstance(theirs, LayerError) else _as_float(theirs)
        if not math.isfinite(error) or error > max(factor * baseline, floor):
            return layer
    return None


def _as_float(value: object) -> float:
    return float(value)  # type: ignore[arg-type]  # a plain float from the caller's list


def token_match_rate(test_tokens: torch.Tensor, ref_tokens: torch.Tensor) -> TokenMatch:
    """Agreement of greedy generations, [seq] or [batch, seq] token ids (generated tokens only).

    After the first mismatch the two runs decode from different prefixes, so later matches are
    partly coincidence: `prefix_match_rate` is the rate to gate on, `overall_match_rate` is context.
    """
    _check_same_shape("token ids", test_tokens, ref_tokens)
    if test_tokens.dim() not in (1, 2) or test_tokens.numel() == 0:
        raise MetricInputError(
            f"token ids must be a non-empty [seq] or [batch, seq]; got shape {tuple(test_tokens.shape)}")
    equal = (test_tokens == ref_tokens).reshape(-1, test_tokens.shape[-1]).cpu()
    length = equal.shape[1]
    first_mismatch = tuple(None if bool(row.all()) else int((~row).nonzero()[0]) for row in equal)
    prefix_lengths = [length if index is None else index for index in first_mismatch]
    return TokenMatch(
        prefix_match_rate=sum(prefix_lengths) / (length * len(prefix_lengths)),
        overall_match_rate=equal.double().mean().item(),
        first_mismatch=first_mismatch,
    )


def _included(tensor: torch.Tensor, mask: torch.Tensor | None, what: str) -> torch.Tensor:
    """The [n, last] rows of `tensor` at the positions `mask` includes (all of them when mask is None)."""
    if mask is None:
        return tensor
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(tensor.shape[:-1]):
        raise MetricInputError(f"{what}: the mask must be bool of shape {tuple(tensor.shape[:-1])} (the positions); "
                               f"got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise MetricInputError(f"{what}: the mask includes no position")
    return tensor[mask.to(tensor.device)]


def _f64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float64)


def _check_same_shape(what: str, test: torch.Tensor, ref: torch.Tensor) -> None:
    if test.shape != ref.shape:
        raise MetricInputError(f"{what} shapes differ: test {tuple(test.shape)} vs ref {tuple(ref.shape)}")


def _few(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit]) or "nothing"
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with 0/0 = 0 and x/0 = inf: zero error against a zero scale is no error."""
    if denominator == 0.0:
        return 0.0 if numerator == 0.0 else math.inf
    return numerator / denominator


def _robust_scale(ref64: torch.Tensor) -> float:
    """Nearest-rank ROBUST_SCALE_QUANTILE of |ref|, falling back to max|ref| when that is 0."""
    magnitudes = ref64.abs().flatten()
    rank = min(max(math.ceil(ROBUST_SCALE_QUANTILE * magnitudes.numel()), 1), magnitudes.numel())
    scale = magnitudes.kthvalue(rank).values.item()  # kthvalue: torch.quantile refuses > 2**24 elements
    return scale if scale > 0.0 else magnitudes.max().item()


def _cosine(test64: torch.Tensor, ref64: torch.Tensor) -> float:
    """Cosine of the flattened tensors; 1 when both are zero, 0 when exactly one is."""
    test_norm, ref_norm = test64.norm().item(), ref64.norm().item()
    if test_norm == 0.0 or ref_norm == 0.0:
        return 1.0 if test_norm == ref_norm else 0.0
    cosine = (test64.flatten() @ ref64.flatten()).item() / (test_norm * ref_norm)
    return cosine if math.isnan(cosine) else max(-1.0, min(1.0, cosine))  # min/max would drop a NaN


def _rel_norm_error(test64: torch.Tensor, ref64: torch.Tensor) -> float:
    return _ratio((test64 - ref64).norm().item(), ref64.norm().item())


def _sqnr_db(test64: torch.Tensor, ref64: torch.Tensor) -> float:
    noise, signal = (ref64 - test64).norm().item(), ref64.norm().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)


def _kl_div_nats(test64: torch.Tensor, ref64: torch.Tensor) -> float:
    log_p, log_q = torch.log_softmax(ref64, dim=-1), torch.log_softmax(test64, dim=-1)
    p = log_p.exp()
    # Terms with p = 0 contribute 0 even where log q = -inf (masked vocab entries).
    per_position = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)
    return per_position.clamp(min=0.0).mean().item()  # clamp: rounding can leave -1e-17


def _top1_agreement(test64: torch.Tensor, ref64: torch.Tensor) -> float:
    return (test64.argmax(dim=-1) == ref64.argmax(dim=-1)).double().mean().item()


def _top_k_agreement(test64: torch.Tensor, ref64: torch.Tensor, k: int) -> float:
    top_k_ref = ref64.topk(min(k, ref64.shape[-1]), dim=-1).indices
    hits = (top_k_ref == test64.argmax(dim=-1, keepdim=True)).any(dim=-1)
    return hits.double().mean().item()


def _grad_metric(name: str, test: torch.Tensor, ref: torch.Tensor) -> GradMetric:
    _check_same_shape(f"gradient {name!r}", test, ref)
    test64, ref64 = _f64(test), _f64(ref)
    max_abs = (test64 - ref64).abs().max().item() if test64.numel() else 0.0
    return GradMetric(parameter=name, rel_norm_error=_rel_norm_error(test64, ref64),
                      cosine=_cosine(test64, ref64), max_abs=max_abs)


# ---- per-position errors: what the statistical verdict resamples ---------------------------------


_TOKEN_FIELDS = ("sq_error", "ref_sq", "test_sq", "dot", "abs_max", "abs_sum", "kl", "top1_agree", "top5_agree")


@dataclass(frozen=True, kw_only=True)
class TokenErrors:
    """Per-position errors of test logits against reference logits, flattened to [positions] (float64, CPU).

    Sums over positions give the global metrics (`summary`), so a bootstrap over blocks of positions
    can resample them: rel_rms = sqrt(Σ sq_error / Σ ref_sq), kl_div = mean(kl), top1 = mean(top1_agree).
    """

    sq_error: torch.Tensor  # ‖test − ref‖² over the vocab
    ref_sq: torch.Tensor  # ‖ref‖²
    test_sq: torch.Tensor  # ‖test‖²
    dot: torch.Tensor  # test · ref
    abs_max: torch.Tensor  # max |test − ref|
    abs_sum: torch.Tensor  # Σ |test − ref|
    kl: torch.Tensor  # KL(softmax(ref) ‖ softmax(test)), nats
    top1_agree: torch.Tensor  # 1.0 where argmax(test) == argmax(ref)
    top5_agree: torch.Tensor  # 1.0 where argmax(test) is among ref's TOP_K_AGREEMENT most likely
    vocab: int

    @staticmethod
    def concat(parts: Sequence[TokenErrors]) -> TokenErrors:
        """One TokenErrors over the positions of all `parts`, in order."""
        return TokenErrors(vocab=parts[0].vocab,
                           **{name: torch.cat([getattr(p, name) for p in parts]) for name in _TOKEN_FIELDS})

    def rel_rms(self) -> float:
        """sqrt(Σ‖test − ref‖² / Σ‖ref‖²) over all positions: the logits' relative RMS error."""
        return math.sqrt(_ratio(self.sq_error.sum().item(), self.ref_sq.sum().item()))

    def summary(self, robust_scale: float) -> dict[str, float]:
        """The LogitsMetrics figures over all positions (robust_rel against `robust_scale`), plus rel_rms."""
        max_abs = self.abs_max.max().item()
        noise, signal = self.sq_error.sum().item(), self.ref_sq.sum().item()
        norms = math.sqrt(self.test_sq.sum().item() * signal)
        cosine = (1.0 if self.test_sq.sum().item() == signal else 0.0) if norms == 0 else \
            max(-1.0, min(1.0, self.dot.sum().item() / norms))
        sqnr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
        return {"max_abs": max_abs, "mean_abs": self.abs_sum.sum().item() / (self.abs_sum.numel() * self.vocab),
                "robust_rel": _ratio(max_abs, robust_scale), "rel_rms": self.rel_rms(), "cosine": cosine,
                "sqnr_db": sqnr, "kl_div": self.kl.mean().item(), "top1_agreement": self.top1_agree.mean().item(),
                "top5_agreement": self.top5_agree.mean().item()}


def robust_scale(ref: torch.Tensor) -> float:
    """The scale robust_rel divides by: the 99.9th percentile of |ref| (max |ref| when that is 0)."""
    return _robust_scale(_f64(ref))


def token_errors(test: torch.Tensor, ref: torch.Tensor) -> TokenErrors:
    """Per-position errors of `test` against `ref` logits ([..., vocab], same shape)."""
    _check_same_shape("logits", test, ref)
    test64 = _f64(test).reshape(-1, test.shape[-1])
    ref64 = _f64(ref).reshape(-1, ref.shape[-1])
    delta = test64 - ref64
    log_p, log_q = torch.log_softmax(ref64, dim=-1), torch.log_softmax(test64, dim=-1)
    p = log_p.exp()
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1).clamp(min=0.0)
    top1 = test64.argmax(-1, keepdim=True)
    top5 = (ref64.topk(min(TOP_K_AGREEMENT, ref64.shape[-1]), dim=-1).indices == top1).any(-1)
    return TokenErrors(sq_error=delta.pow(2).sum(-1).cpu(), ref_sq=ref64.pow(2).sum(-1).cpu(),
                       test_sq=test64.pow(2).sum(-1).cpu(), dot=(test64 * ref64).sum(-1).cpu(),
                       abs_max=delta.abs().amax(-1).cpu(), abs_sum=delta.abs().sum(-1).cpu(), kl=kl.cpu(),
                       top1_agree=(top1.squeeze(-1) == ref64.argmax(-1)).double().cpu(),
                       top5_agree=top5.double().cpu(), vocab=test.shape[-1])


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats) of each next token: [batch, seq-1] from [batch, seq, vocab] logits."""
    log_probs = torch.log_softmax(_f64(logits[:, :-1]), dim=-1)
    return -log_probs.gather(-1, ids[:, 1:, None].to(log_probs.device)).squeeze(-1).cpu()


def perplexity(nll: torch.Tensor) -> float:
    """exp(mean NLL): the model's perplexity on the text the NLLs came from."""
    if nll.numel() == 0:
        raise MetricInputError("perplexity needs at least one predicted token")
    return math.exp(nll.mean().item())


def grad_comparison(test_grads: Mapping[str, torch.Tensor], ref_grads: Mapping[str, torch.Tensor]
                    ) -> tuple[dict[str, float], GradMetric]:
    """Gradient error over ALL parameters at once, and the worst single parameter (a diagnosis).

    Global: ‖g − r‖/‖r‖ and the cosine of the concatenated gradients. One parameter with a tiny
    reference gradient can have a large relative error by itself without the model's update being any
    different; the global figures weigh each parameter by its gradient. One pass over the tensors.
    """
    if test_grads.keys() != ref_grads.keys():
        grad_metrics(test_grads, ref_grads)  # raises GradKeysMismatchError naming the keys
    if not ref_grads:
        raise MetricInputError("no gradients to compare")
    sums = torch.zeros(4, dtype=torch.float64)  # Σ‖g − r‖², Σ‖r‖², Σ‖g‖², Σ g·r
    worst: GradMetric | None = None
    for name, ref in ref_grads.items():
        _check_same_shape(f"gradient {name!r}", test_grads[name], ref)
        t64, r64 = _f64(test_grads[name]).flatten(), _f64(ref).flatten()
        diff = t64 - r64
        part = torch.stack([diff.dot(diff), r64.dot(r64), t64.dot(t64), t64.dot(r64)]).cpu()
        sums += part
        metric = GradMetric(parameter=name, rel_norm_error=math.sqrt(_ratio(part[0].item(), part[1].item())),
                            cosine=_cosine_of(part[3].item(), part[2].item(), part[1].item()),
                            max_abs=diff.abs().max().item() if diff.numel() else 0.0)
        if worst is None or not metric.rel_norm_error <= worst.rel_norm_error:  # NaN counts as worst
            worst = metric
    diff_sq, ref_sq, test_sq, dot = sums.tolist()
    assert worst is not None
    return {"grad_rel_norm_error": math.sqrt(_ratio(diff_sq, ref_sq)),
            "grad_cosine": _cosine_of(dot, test_sq, ref_sq)}, worst


def _cosine_of(dot: float, test_sq: float, ref_sq: float) -> float:
    """dot / (‖test‖‖ref‖); 1 when both are zero, 0 when exactly one is."""
    norms = math.sqrt(test_sq * ref_sq)
    if norms == 0:
        return 1.0 if test_sq == ref_sq else 0.0
    cosine = dot / norms
    return cosine if math.isnan(cosine) else max(-1.0, min(1.0, cosine))


def matched_prefix_lengths(test_tokens: torch.Tensor, ref_tokens: torch.Tensor) -> torch.Tensor:
    """Per sequence ([batch, new_tokens]), how many generated tokens match the reference before the first miss."""
    _check_same_shape("token ids", test_tokens, ref_tokens)
    equal = (test_tokens == ref_tokens).cpu()
    return equal.int().cumprod(dim=-1).sum(dim=-1).double()
