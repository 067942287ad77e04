"""`teswap run`, the main job: environment, parity at every precision the hardware runs, the benchmark sweep,
everything appended to the results store, then the published table and charts.

Every speed figure the job publishes stands beside the parity verdict of the same model, backend and
precision from the same run: the parity cases are planned from the sweep, one per (timed model, backend,
precision), and run before it. The real model is the headline on a CPU (SmolLM2-135M when installed, both
checked and timed); the tiny preset is the quick smoke (`--model tiny`, and the fallback without it).

    plan.py         RunPlan and plan_run: the machine's defaults, each with its reason, flags override
    parity_plan.py  the parity cases of a sweep, each sized to fit the free memory (or standing in, marked)
    run.py          run_job: parity, then the sweep, the store and the report, each stage kept as it goes
"""

from teswap.job.plan import RunPlan, plan_run
from teswap.job.run import run_job

__all__ = ["RunPlan", "plan_run", "run_job"]
