"""The records the store holds, as frozen dataclasses: producers build one, `RunWriter.write` stores it,
`from_dict` reads one back. The store adds schema_version, kind, run_id and provenance around the
fields (teswap.store.runs); results/README.md documents every field.

Values inside the nested fields (a cell, metrics, statistics) stay plain JSON-able dicts: their keys
are each producer's (teswap.benchmark.records, teswap.parity.case), and units are in their names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

BENCH_STATUSES = ("ok", "oom", "error", "skipped")
PARITY_STATUSES = ("passed", "failed", "skipped", "error")
# A decode cell's inference metrics, in every bench record's "metrics" (null outside decode cells;
# definitions in teswap.benchmark.decode.metrics), and the phases a decode step times inside itself,
# which a paired record's "paired.phases" gives a ratio and CI each. The benchmark writes these and
# the reports read them: named once, here.
DECODE_METRICS = ("ttft_s", "tpot_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "decode_tokens_per_s",
                  "e2e_tokens_per_s", "energy_per_output_token_j")
DECODE_PHASES = ("ttft_s", "tpot_s")


def _pick(cls: type, record: dict[str, Any]) -> dict[str, Any]:
    """The keys of `record` that are fields of `cls` (a stored record also has kind, provenance...)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in record.items() if key in names}


@dataclass(frozen=True, kw_only=True)
class BenchRecord:
    """One measured (or skipped, oom, errored) benchmark cell."""

    kind: ClassVar[str] = "bench"
    cell: dict[str, Any]
    cell_key: str  # resume identity: cell, model shape, commit and machine
    cell_finished_utc: str
    recipe: dict[str, Any] | None  # the FP8 recipe a swapped cell ran under, with every setting
    model_config: dict[str, Any]
    status: str
    reason: str | None
    stats: dict[str, Any] | None  # timing statistics with the raw samples
    metrics: dict[str, Any]
    gpu: dict[str, Any]
    settings: dict[str, Any]
    paired: dict[str, Any] | None = None  # a swapped cell timed with its stock baseline: both sides' rounds, speedup CI
    noise: dict[str, Any] | None = None  # the noise guard's verdict: noisy, reasons, figures, attempts
    clocks: dict[str, Any] | None = None  # GPU clocks, temperature and clock event reasons while timed
    decode: dict[str, Any] | None = None  # a decode cell's per-generation phases and per-token latencies
    distributed: dict[str, Any] | None = None  # a torchrun launch: plan, mesh, every rank's identity and times

    def __post_init__(self) -> None:
        if self.status not in BENCH_STATUSES:
            raise ValueError(f"status must be one of {BENCH_STATUSES}, got {self.status!r}")

    def fields(self) -> dict[str, Any]:
        """The record's own fields, as the store writes them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> BenchRecord:
        """A stored bench record (extra keys such as provenance are left out)."""
        return cls(**_pick(cls, record))


@dataclass(frozen=True, kw_only=True)
class ParityRecord:
    """One parity case: stock and swapped against the reference, and the verdict; or why it was skipped."""

    kind: ClassVar[str] = "parity"
    case: dict[str, Any]
    status: str
    passed: bool
    reason: str | None
    policy: dict[str, Any] | None  # {name, version}
    metrics: dict[str, Any] | None  # {"swapped": {...}, "stock": {...}}
    first_divergent_layer: int | None
    reference_dtype: str | None = None
    layer_errors: dict[str, list[float]] | None = None
    worst_grad: str | None = None
    verdict_rows: list[dict[str, Any]] | None = None  # the swap verdict's rows (bounds relative to stock)
    skipped_bounds: list[str] | None = None
    precision_verdict: str | None = None  # "fit": stock meets the precision's absolute bounds; "lossy": it does not
    precision_rows: list[dict[str, Any]] | None = None
    perplexity: dict[str, float] | None = None  # reference, stock, swapped
    generation: dict[str, float] | None = None  # prompts, new tokens, mean matched tokens of stock and swapped
    inputs: str | None = None  # what the models were fed (real text and its corpus digest, or random ids)
    recipe: dict[str, Any] | None = None  # the swapped model's FP8 recipe, every field as its backend holds it
    routing: dict[str, Any] | None = None  # MoE families: routing agreement, flips, tokens per expert, aux loss
    distributed: dict[str, Any] | None = None  # a sharded check: the launch (plan, world size, mesh) and its audit

    def __post_init__(self) -> None:
        if self.status not in PARITY_STATUSES:
            raise ValueError(f"status must be one of {PARITY_STATUSES}, got {self.status!r}")

    @classmethod
    def skipped(cls, case: dict[str, Any], reason: str) -> ParityRecord:
        """A case this backend or hardware cannot run: status skipped, with the reason."""
        return cls(case=case, status="skipped", passed=False, reason=reason, policy=None, metrics=None,
                   first_divergent_layer=None)

    def fields(self) -> dict[str, Any]:
        """The record's own fields, as the store writes them (optional ones only when set)."""
        data = asdict(self)
        optional = ("reference_dtype", "layer_errors", "worst_grad", "verdict_rows", "skipped_bounds",
                    "precision_verdict", "precision_rows", "perplexity", "generation", "inputs", "recipe", "routing",
                    "distributed")
        return {key: value for key, value in data.items() if key not in optional or value is not None}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ParityRecord:
        """A stored parity record (extra keys such as provenance are left out)."""
        return cls(**_pick(cls, record))


Record = BenchRecord | ParityRecord
