"""Precisions and FP8: the one table of names, TE's recipes, their emulation, TE's own glue.

    table.py       the ONE table: precision name -> model dtype, TE recipe class, default format
    recipes.py     TE's recipes as teswap dataclasses (DelayedScaling, Float8CurrentScaling, formats)
    emulation.py   those recipes in pure PyTorch: autocast, per-tensor scaling, the FP8 GEMM
    gemm.py        GemmSite, the one place the torch layers multiply (and quantize under FP8)
    fused.py       what TE's fused RMSNorm / SwiGLU kernels hand the next GEMM, per recipe (KernelOutput)
    stock.py       stock HF linears routed through GemmSites: "stock at the same FP8 recipe"
    te_glue.py     TE's recipe objects for the installed TE version, its autocast, recipe records
    runtime.py     can a backend run a precision here (why not), the swapped model's context, calibration
"""
