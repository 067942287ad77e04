"""Synthetic results for the reporting tests, written through the real store writer (open_run/append).

Throughput follows a simple roofline-ish model (MFU rising with sequence length, TE faster than
stock, FP8 faster only at long sequences) with lognormal timing noise, so every table, chart and
comparison is computed from samples, never from numbers a test merely echoes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from teswap.store.provenance import GitInfo, LibraryVersions, MachineInfo, Provenance
from teswap.store.runs import open_run

H200 = MachineInfo(hostname="gpu-1", platform="Linux-6.8.0-x86_64-with-glibc2.39", cpu_model="AMD EPYC 9654",
                   cpu_cores=192, gpu_name="NVIDIA H200", gpu_count=1, compute_capability="9.0",
                   cuda_runtime="12.8", driver_version="570.86.15")
LIBRARIES = LibraryVersions(python="3.12.3", torch="2.11.0+cu128", transformers="5.17.0",
                            transformer_engine="2.8.0", teswap="0.1.0")
MODELS = {"llama3.2-1b": dict(params=1_235_814_400, hidden_size=2048, num_hidden_layers=16),
          "llama3-8b": dict(params=8_030_261_248, hidden_size=4096, num_hidden_layers=32)}
BF16_PEAK_FLOPS = 989e12
# Speed of a variant relative to stock bf16 at short and long sequences (interpolated in log2 seq).
VARIANT_SPEED = {("te", "bf16"): (1.05, 1.18), ("te", "fp8-delayed"): (0.85, 1.45),
                 ("torch", "bf16"): (0.96, 0.98), ("stock", "bf16"): (1.0, 1.0), ("stock", "fp32"): (0.3, 0.35),
                 ("torch", "fp32"): (0.29, 0.34)}
VARIANTS = (("stock", "bf16"), ("te", "bf16"), ("te", "fp8-delayed"), ("torch", "bf16"))


def provenance(sha: str, utc_time: str, machine: MachineInfo = H200, dirty: bool = False) -> Provenance:
    """A GPU machine's provenance at commit `sha`."""
    return Provenance(git=GitInfo(sha=sha, dirty=dirty, branch="main"), machine=machine, libraries=LIBRARIES,
                      utc_time=utc_time)


def timing_samples(rng: np.random.Generator, median_s: float, count: int = 20, noise: float = 0.02) -> list[float]:
    """Iteration times around `median_s`: lognormal noise plus an occasional slow outlier."""
    samples = median_s * rng.lognormal(0.0, noise, size=count)
    outliers = rng.random(count) < 0.05
    samples[outliers] *= 1.0 + rng.uniform(0.05, 0.2, size=int(outliers.sum()))
    return [float(s) for s in samples]


def bench_fields(rng: np.random.Generator, model: str, workload: str, backend: str, precision: str, seq_len: int,
                 batch: int = 1, *, slowdown: float = 1.0, status: str = "ok", samples: int = 20,
                 machine_slowdown: float = 1.0, paired: bool = False, noisy: tuple[str, ...] = ()) -> dict:
    """One benchmark cell's record fields, from the throughput model; `slowdown` scales every time of
    this variant, `machine_slowdown` every time on the machine (the stock baseline's too). `paired`:
    a swapped cell timed in rounds with its stock baseline (schema 2); `noisy`: the guard's reasons."""
    spec = MODELS[model]
    flops_per_token = (2 if workload == "prefill" else 6) * spec["params"] + 12 * spec["num_hidden_layers"] * \
        spec["hidden_size"] * seq_len
    short, long = VARIANT_SPEED[(backend, precision)]
    mix = (np.log2(seq_len) - 9) / 4
    mfu_stock = 0.25 + 0.2 * min(max(mix, 0.0), 1.0)
    tokens_per_s = mfu_stock * (short + (long - short) * mix) * BF16_PEAK_FLOPS / flops_per_token / slowdown
    tokens = batch * seq_len
    cell = {"model": model, "workload": workload, "backend": backend, "precision": precision,
            "seq_len": seq_len, "batch": batch, "device": "cuda"}
    model_config = {"hidden_size": spec["hidden_size"], "num_hidden_layers": spec["num_hidden_layers"],
                    "params": spec["params"]}
    if status != "ok":
        return {"cell": cell, "model_config": model_config, "status": status,
                "reason": "CUDA out of memory" if status == "oom" else "synthetic failure", "stats": None,
                "metrics": dict.fromkeys(("tokens_per_s", "peak_allocated_bytes", "energy_per_token_j"))}
    step_s = tokens / tokens_per_s * machine_slowdown
    times = timing_samples(rng, step_s, count=samples)
    pairing = None
    if paired and backend != "stock":
        stock = ("stock", "fp32" if precision == "fp32" else "bf16")
        stock_s = step_s / slowdown * speed_of((backend, precision), seq_len) / speed_of(stock, seq_len)
        pairing, times = paired_rounds(rng, stock_s, step_s, rounds=samples // 2, cell=cell)
    median_s = float(np.median(times))
    q1, q3 = np.percentile(times, [25, 75])
    measured = tokens / median_s
    weight_bytes = spec["params"] * (4 if precision == "fp32" else 2)
    peak = weight_bytes * (3 if workload == "train" else 1) + 40_000 * tokens * spec["num_hidden_layers"] * \
        (0.8 if backend == "te" else 1.0)
    power_w = 520.0 + 60 * rng.random()
    return {
        "paired": pairing, "noise": {"noisy": bool(noisy), "reasons": list(noisy), "figures": {}, "attempts": 1,
                                     "earlier_reasons": []},
        "cell": cell, "model_config": model_config, "status": "ok", "reason": "",
        "stats": {"median_s": median_s, "iqr_s": float(q3 - q1), "mean_s": float(np.mean(times)),
                  "std_s": float(np.std(times)), "min_s": float(np.min(times)), "count": len(times), "warmup": 3,
                  "samples_s": times},
        "metrics": {"tokens_per_s": measured, "peak_allocated_bytes": int(peak),
                    "peak_reserved_bytes": int(peak * 1.1), "peak_memory_method": "torch.cuda.max_memory_allocated",
                    "energy_j": power_w * sum(times), "energy_per_token_j": power_w / measured,
                    "power_avg_w": power_w, "power_peak_w": power_w * 1.2, "flops_per_token": flops_per_token,
                    "mfu_vs_bf16_peak": measured * flops_per_token / BF16_PEAK_FLOPS,
                    "mfu_vs_precision_peak": measured * flops_per_token / (
                        BF16_PEAK_FLOPS * (2 if precision.startswith("fp8") else 1))},
    }


def speed_of(variant: tuple[str, str], seq_len: int) -> float:
    """A variant's speed relative to stock bf16 at `seq_len` (the throughput model's interpolation)."""
    short, long = VARIANT_SPEED[variant]
    return short + (long - short) * (np.log2(seq_len) - 9) / 4


def paired_rounds(rng: np.random.Generator, stock_s: float, swapped_s: float, *, rounds: int,
                  cell: dict) -> tuple[dict, list[float]]:
    """Rounds of 2 blocks x 2 steps per side, a shared per-round machine factor (drift, neighbours) on
    both sides, through the real statistics; the "paired" field and the swapped side's samples."""
    from teswap.statistics import paired_ratio

    machine = rng.lognormal(0.0, 0.05, size=rounds)
    swapped = [[float(s) for s in swapped_s * m * rng.lognormal(0.0, 0.01, size=4)] for m in machine]
    stock = [[float(s) for s in stock_s * m * rng.lognormal(0.0, 0.01, size=4)] for m in machine]
    ratio = paired_ratio(stock, swapped)
    stock_median = float(np.median([s for r in stock for s in r]))
    field = {"baseline": {**cell, "backend": "stock", "precision": "fp32" if cell["precision"] == "fp32" else "bf16"},
             "order": "abba", "placement": "resident", "rounds": rounds, "block_steps": 2, "samples_s": swapped,
             "baseline_samples_s": stock, "speedup": ratio.estimate, "speedup_ci_low": ratio.ci_low,
             "speedup_ci_high": ratio.ci_high, "confidence": ratio.confidence, "method": ratio.method,
             "baseline_median_s": stock_median,
             "baseline_tokens_per_s": cell["batch"] * cell["seq_len"] / stock_median}
    return field, [s for r in swapped for s in r]


def parity_fields(model: str, backend: str, precision: str, seq_len: int, *, passed: bool) -> dict:
    """One parity case's record fields."""
    error = 0.004 if passed else 0.09
    return {"case": {"model": model, "backend": backend, "precision": precision, "seq_len": seq_len, "batch": 2,
                     "device": "cuda", "fuse_qkv": False, "seed": 0},
            "policy": {"name": precision if precision != "fp8-delayed" else "fp8", "version": 1},
            "passed": passed, "status": "passed" if passed else "failed",
            "reason": "" if passed else f"robust_rel {error} > 0.03",
            "metrics": {"swapped": {"robust_rel": error, "cosine": 1 - error ** 2, "top1_agreement": 1 - error},
                        "stock": {"robust_rel": 0.003, "cosine": 0.99999, "top1_agreement": 0.998}},
            "first_divergent_layer": None if passed else 3}


def write_commit(root: Path, sha: str, utc_time: str, *, seed: int, models: Iterable[str] = ("llama3.2-1b",),
                 workloads: Iterable[str] = ("prefill",), seq_lens: Iterable[int] = (512, 2048),
                 variants: Iterable[tuple[str, str]] = VARIANTS, slow: Mapping[tuple[str, str], float] = {},
                 failing_parity: Iterable[tuple[str, str]] = (), oom: Iterable[tuple[str, str, int]] = (),
                 machine: MachineInfo = H200, dirty: bool = False, paired: bool = False,
                 machine_slowdown: float = 1.0, noisy: Mapping[tuple[str, str, int], tuple[str, ...]] = {}) -> Path:
    """One run at commit `sha`: a bench record per cell and a parity case per swapped variant
    (`paired`: schema-2 records, each swapped cell timed in rounds with stock)."""
    rng = np.random.default_rng(seed)
    writer = open_run(root, provenance(sha, utc_time, machine, dirty))
    failing, ooms = set(failing_parity), set(oom)
    for model in models:
        for workload in workloads:
            for seq_len in seq_lens:
                for backend, precision in variants:
                    status = "oom" if (backend, precision, seq_len) in ooms else "ok"
                    writer.append("bench", bench_fields(
                        rng, model, workload, backend, precision, seq_len, slowdown=slow.get((backend, precision), 1.0),
                        status=status, paired=paired, machine_slowdown=machine_slowdown,
                        noisy=noisy.get((backend, precision, seq_len), ())))
        for backend, precision in variants:
            if backend != "stock":
                writer.append("parity", parity_fields(model, backend, precision, 512,
                                                      passed=(backend, precision) not in failing))
    return writer.path


def other_machine(hostname: str = "gpu-2", gpu_name: str = "NVIDIA A100-SXM4-80GB") -> MachineInfo:
    """A second machine, for cross-machine refusals."""
    return replace(H200, hostname=hostname, gpu_name=gpu_name, compute_capability="8.0")


def fake_sha(index: int) -> str:
    """A 40-hex sha that no real repository has."""
    return f"{index:02x}" + "c0ffee" * 6 + "ab"


def teswap(argv: list[str]) -> int:
    """`teswap <argv>` through the real CLI entry point, with the report and compare commands
    registered even before cli._commands lists them (the dict merge is harmless after)."""
    from teswap import cli
    from teswap.commands import compare, report

    original = cli._commands
    cli._commands = lambda: {**original(), "report": report, "compare": compare}
    try:
        return cli.main(argv)
    finally:
        cli._commands = original


def git_repo(path: Path, commits: int) -> list[str]:
    """A git repository at `path` with `commits` empty commits one day apart; their shas, oldest first."""
    import os
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    shas = []
    for day in range(commits):
        stamp = f"2026-02-{day + 1:02d}T12:00:00+00:00"
        env = {**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                        "--allow-empty", "-m", f"commit {day}"], cwd=path, check=True, env=env)
        shas.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True,
                                   text=True).stdout.strip())
    return shas


def make_site_store(root: Path) -> dict:
    """Three commits: te/bf16 10% slower at the newest, whose te/fp8-delayed parity also fails."""
    shas = git_repo(root / "repo", 3)
    for index, sha in enumerate(shas):
        write_commit(root / "results", sha, f"2026-04-0{index + 1}T08:00:00+00:00", seed=40 + index,
                     slow={("te", "bf16"): 1 / 0.9} if index == 2 else {},
                     failing_parity=[("te", "fp8-delayed")] if index == 2 else [])
    return {"repo": root / "repo", "results": root / "results", "shas": shas}


# Decode on an H200 (llama3.2-1b, bf16): per variant (backend, precision, options), the prefill's speed
# relative to stock and the time per output token at batch 1, ms: the ladder HF -> TE -> +graphs -> +FP8 weights.
DECODE_VARIANTS = {("stock", "bf16", ""): (1.0, 14.0), ("stock", "bf16", "cuda-graphs"): (1.0, 7.0),
                   ("te", "bf16", ""): (1.12, 11.0), ("te", "bf16", "cuda-graphs"): (1.12, 4.6),
                   ("te", "fp8-delayed", "cuda-graphs+fp8-weights"): (1.3, 3.6)}
DECODE_PREFILL_TOKENS_PER_S = 60_000.0  # stock's prefill at batch 1


def decode_marks(rng: np.random.Generator, ttft_s: float, tpot_s: float, new_tokens: int, factor: float) -> list[float]:
    """One generation's token marks (s from the prefill's start): the prefill, then lognormal gaps."""
    gaps = tpot_s * rng.lognormal(0.0, 0.03, size=new_tokens - 1)
    return list(np.cumsum([ttft_s * rng.lognormal(0.0, 0.02), *gaps]) * factor)


def _decode_times(variant: tuple[str, str, str], seq_len: int, batch: int) -> tuple[float, float]:
    prefill_speed, tpot_ms = DECODE_VARIANTS[variant]
    ttft_s = batch * seq_len / (DECODE_PREFILL_TOKENS_PER_S * prefill_speed)
    return ttft_s, tpot_ms / 1e3 * (1 + 0.04 * (batch - 1)) * (1 + seq_len / 8192)


def _generations(rng, variant, seq_len, batch, new_tokens, factors) -> list[list[list[float]]]:
    """Per round, two generations' timings each (step_timings of their marks)."""
    from teswap.benchmark.decode.metrics import step_timings

    ttft_s, tpot_s = _decode_times(variant, seq_len, batch)
    return [[step_timings(decode_marks(rng, ttft_s, tpot_s, new_tokens, f)) for _ in range(2)] for f in factors]


def _pooled(rounds: list[list[dict]]) -> dict[str, list]:
    return {name: [g[name] for r in rounds for g in r] for name in rounds[0][0]}


def decode_bench_fields(rng: np.random.Generator, model: str, variant: tuple[str, str, str], seq_len: int,
                        batch: int, new_tokens: int, rounds: int = 6) -> dict:
    """One decode cell's record fields (schema 3): its generations timed in rounds with stock (the options
    stock can run), every metric computed by the real decode_metrics and statistics from token marks."""
    from teswap.benchmark.decode.metrics import decode_summary
    from teswap.benchmark.decode.options import option_reason
    from teswap.speed_options import stock_options
    from teswap.statistics import paired_ratio

    backend, precision, options = variant
    cell = {"model": model, "workload": "decode", "backend": backend, "precision": precision, "seq_len": seq_len,
            "batch": batch, "device": "cuda", "new_tokens": new_tokens, "options": options}
    spec = MODELS[model]
    model_config = {"hidden_size": spec["hidden_size"], "num_hidden_layers": spec["num_hidden_layers"],
                    "params": spec["params"]}
    reason = option_reason(backend=backend, precision=precision, options=options, batch=batch)
    if reason:
        return {"cell": cell, "model_config": model_config, "status": "skipped", "reason": reason, "stats": None,
                "metrics": {}}
    factors = rng.lognormal(0.0, 0.04, size=rounds)  # the machine's drift, shared by both sides of a round
    measured = _generations(rng, variant, seq_len, batch, new_tokens, factors)
    timings = _pooled(measured)
    metrics = decode_summary(timings, batch=batch, new_tokens=new_tokens)
    steps = timings["step_s"]
    median_s = float(np.median(steps))
    power_w = 480.0 + 40 * rng.random()
    paired = None
    if backend != "stock":
        baseline = _generations(rng, ("stock", "bf16", stock_options(options)), seq_len, batch, new_tokens, factors)
        side = {name: [[g[name] for g in r] for r in measured] for name in ("step_s", "ttft_s", "tpot_s")}
        base = {name: [[g[name] for g in r] for r in baseline] for name in side}
        ratio = paired_ratio(base["step_s"], side["step_s"])
        phases = {}
        for name in ("ttft_s", "tpot_s"):
            phase = paired_ratio(base[name], side[name])
            phases[name] = {"samples": side[name], "baseline_samples": base[name], "ratio": phase.estimate,
                            "ci_low": phase.ci_low, "ci_high": phase.ci_high}
        paired = {"baseline": {**cell, "backend": "stock", "precision": "bf16", "options": stock_options(options)},
                  "order": "abba", "placement": "resident", "rounds": rounds, "block_steps": 2,
                  "samples_s": side["step_s"], "baseline_samples_s": base["step_s"], "speedup": ratio.estimate,
                  "speedup_ci_low": ratio.ci_low, "speedup_ci_high": ratio.ci_high, "confidence": ratio.confidence,
                  "method": ratio.method, "baseline_median_s": float(np.median(base["step_s"])),
                  "baseline_tokens_per_s": batch * new_tokens / float(np.median(base["step_s"])), "phases": phases}
    return {
        "cell": cell, "model_config": model_config, "status": "ok", "reason": "", "paired": paired,
        "noise": {"noisy": False, "reasons": [], "figures": {}, "attempts": 1, "earlier_reasons": []},
        "stats": {"median_s": median_s, "iqr_s": float(np.subtract(*np.percentile(steps, [75, 25]))),
                  "mean_s": float(np.mean(steps)), "std_s": float(np.std(steps)), "min_s": float(np.min(steps)),
                  "count": len(steps), "warmup": 3, "samples_s": steps},
        "metrics": {**metrics, "tokens_per_s": batch * new_tokens / median_s,
                    "energy_per_output_token_j": power_w * median_s / (batch * new_tokens),
                    "energy_per_token_j": power_w * median_s / (batch * new_tokens),
                    "peak_allocated_bytes": int(spec["params"] * 2 + 2**20 * batch * (seq_len + new_tokens))},
        "decode": {"prompt_tokens": seq_len, "new_tokens": new_tokens, "batch": batch, "options": options,
                   "cache": "te" if backend == "te" else "static" if options else "dynamic",
                   "generations": len(steps), "ttft_s": timings["ttft_s"], "tpot_s": timings["tpot_s"],
                   "itl_s": timings["itl_s"]},
    }


def write_decode_commit(root: Path, sha: str, utc_time: str, *, seed: int, model: str = "llama3.2-1b",
                        seq_lens: Iterable[int] = (128, 512, 2048), batches: Iterable[int] = (1, 8),
                        new_tokens: int = 32, variants: Iterable[tuple[str, str, str]] = tuple(DECODE_VARIANTS),
                        machine: MachineInfo = H200) -> Path:
    """One decode run at commit `sha`: every variant of the ladder at each prompt length and batch (FP8
    weights skip at batch 1 with TE's rows rule)."""
    rng = np.random.default_rng(seed)
    writer = open_run(root, provenance(sha, utc_time, machine))
    for batch in batches:
        for seq_len in seq_lens:
            for variant in variants:
                writer.append("bench", decode_bench_fields(rng, model, variant, seq_len, batch, new_tokens))
    return writer.path
