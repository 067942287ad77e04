"""What this machine has: TE and CUDA probes with reasons, NVML power and energy, GPU identity.

    probe.py     Availability (a yes, or a no with its reason); TE probes; the default device
    te_api.py    which TE API generation is installed, the TE version each feature needs, TE's env vars
    nvml.py      PowerMeter over NVML, NVML errors as typed exceptions, the NVML probe, driver version
    gpu_info.py  GPU identity, limits and clocks recorded with each benchmark
    free_memory.py  free RAM (MemAvailable, cgroup limit) or VRAM (mem_get_info) now, with how it was read
"""
