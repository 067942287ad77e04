"""Where a number came from: commit, machine, library versions, time. Captured once per run."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from teswap.hardware.nvml import driver_version
from teswap.hardware.probe import te_version
from teswap.hardware.te_api import numerics_environment


@dataclass(frozen=True, kw_only=True)
class GitInfo:
    sha: str | None
    dirty: bool | None
    branch: str | None


@dataclass(frozen=True, kw_only=True)
class MachineInfo:
    hostname: str
    platform: str
    cpu_model: str
    cpu_cores: int
    gpu_name: str | None
    gpu_count: int
    compute_capability: str | None
    cuda_runtime: str | None
    driver_version: str | None


@dataclass(frozen=True, kw_only=True)
class LibraryVersions:
    python: str
    torch: str
    transformers: str
    transformer_engine: str | None
    teswap: str
    # Every NVTE_* variable set when the run started (TE reads them for attention backends, norm
    # kernels, recipe defaults such as NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES); empty in older records.
    transformer_engine_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Provenance:
    git: GitInfo
    machine: MachineInfo
    libraries: LibraryVersions
    utc_time: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Provenance:
        """A Provenance from its `to_dict()` form (a stored record's "provenance")."""
        return cls(git=GitInfo(**data["git"]), machine=MachineInfo(**data["machine"]),
                   libraries=LibraryVersions(**data["libraries"]), utc_time=data["utc_time"])


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(cwd: Path | None = None) -> GitInfo:
    """The commit of the working tree at `cwd` (default: the current directory)."""
    cwd = cwd or Path.cwd()
    sha = _git("rev-parse", "HEAD", cwd=cwd)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd) if sha else None
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd) if sha else None
    return GitInfo(sha=sha, dirty=None if status is None else bool(status), branch=branch)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> MachineInfo:
    """CPU and, where CUDA is present, GPU facts of this machine."""
    cuda = torch.cuda.is_available()
    gpu_name = torch.cuda.get_device_name(0) if cuda else None
    capability = ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None
    return MachineInfo(
        hostname=platform.node(),
        platform=platform.platform(),
        cpu_model=_cpu_model(),
        cpu_cores=os.cpu_count() or 0,
        gpu_name=gpu_name,
        gpu_count=torch.cuda.device_count() if cuda else 0,
        compute_capability=capability,
        cuda_runtime=torch.version.cuda,
        driver_version=driver_version() if cuda else None,
    )


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def library_versions() -> LibraryVersions:
    return LibraryVersions(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=_version("transformers"),
        transformer_engine=te_version(),
        teswap=_version("teswap"),
        transformer_engine_env=numerics_environment(),
    )


def capture_provenance(cwd: Path | None = None) -> Provenance:
    """Commit, machine, library versions and the UTC time, now."""
    return Provenance(
        git=git_info(cwd),
        machine=machine_info(),
        libraries=library_versions(),
        utc_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
