"""The te_mixtral ladder (HF -> TE attention -> GroupedLinear experts -> FP8/MXFP8) for an MoE preset, printed as
TE's example prints it, each rung's speedup over stock HF with its 95% CI and its expert load balance:

    .venv/bin/python scripts/moe_ladder.py tiny-mixtral --workload train            # the twin, CPU
    python scripts/moe_ladder.py mixtral-8x7b --backend te --device cuda --workload train --layers 4

--layers keeps that many decoder layers of the preset (Mixtral-8x7B's 46.7B parameters need ~94 GiB in
bf16 for weights alone, before the baseline beside it: a rung that cannot fit is skipped with its
estimate). --json writes the rows with provenance. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from teswap.benchmark.memory_estimate import GIB, weights_bytes
from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.moe_ladder import RUNGS, format_ladder, run_ladder
from teswap.errors import TeswapError
from teswap.store.provenance import capture_provenance
from teswap.swap.presets import PRESETS


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=[name for name in PRESETS if "mixtral" in name or "moe" in name
                                           or "a3b" in name])
    parser.add_argument("--workload", default="train", choices=("prefill", "train", "decode"))
    parser.add_argument("--backend", default="torch", choices=("torch", "te"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--layers", type=int, help="keep this many decoder layers of the preset")
    parser.add_argument("--rungs", default=",".join(RUNGS), help=f"comma-separated, of: {', '.join(RUNGS)}")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rungs = tuple(name.strip() for name in args.rungs.split(",") if name.strip())
    unknown = [name for name in rungs if name not in RUNGS]
    if unknown:
        print(f"unknown rungs {unknown}; choose from {', '.join(RUNGS)}", file=sys.stderr)
        return 2
    config = PRESETS[args.preset]()
    if args.layers:
        config.num_hidden_layers = args.layers
        if getattr(config, "mlp_only_layers", None):
            config.mlp_only_layers = [i for i in config.mlp_only_layers if i < args.layers]
    shape = ModelShape.from_config(config)
    import torch

    print(f"{args.preset}: {_count(shape.params)} parameters ({_count(shape.matmul_params)} active per token), "
          f"weights {weights_bytes(shape, torch.bfloat16) / GIB:.2f} GiB in bf16")
    try:
        rows = run_ladder(config if args.layers else args.preset, workload=args.workload,
                          backend=args.backend, device=args.device, seq_len=args.seq_len, batch=args.batch,
                          new_tokens=args.new_tokens, rungs=rungs)
    except (TeswapError, ValueError) as err:
        print(str(err).splitlines()[0], file=sys.stderr)
        return 2
    print(format_ladder(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"provenance": capture_provenance().to_dict(), "preset": args.preset, "layers": args.layers,
                       "rows": rows}, handle, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
