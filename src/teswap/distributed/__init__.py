"""Runs past one process: torchrun's environment read once into a `Parallel` (plan, mesh, device), the
cross-rank agreement the benchmark and the checks need (barriers, slowest-rank times, one verdict for
all), the sharding plans applied to both sides of a pair, parity under sharding and sharded checkpoints.

Everything here is torch.distributed (init_process_group, DeviceMesh, FSDP2, DTensor, DCP); nothing
here launches processes or implements a collective of its own. Outside torchrun `Parallel.single()`
stands for one process and every collective is a no-op.
"""
