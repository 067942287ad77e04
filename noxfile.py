"""nox sessions for developers and GPU runners.

`nox -s tests` is what the README's test command runs (CPU unit tests, CPU correctness cases,
benchmark smoke). `correctness` and `bench` are the GPU sessions: default only where nvidia-smi
exists, TE installed from the `te` extra. `report` renders tables, charts and the HTML site from
the results store. Dependencies come from pyproject.toml, never repeated here; posargs go to the
tool each session runs.
"""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = False

PYPROJECT = nox.project.load_toml("pyproject.toml")
HAS_GPU = bool(shutil.which("nvidia-smi"))
# On our CPU machines 2.13.0 is a local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
# GPU runners keep the CUDA torch they were provisioned with (TE compiles against it).
CPU_TORCH = "torch==2.13.0"
RESULTS = "results"


def _install(session: nox.Session, *groups: str, extras: str = "") -> None:
    if not HAS_GPU:
        session.install(CPU_TORCH)
    requirements = [d for g in groups for d in nox.project.dependency_groups(PYPROJECT, g)]
    if extras:  # TE's torch extension builds against the installed CUDA torch: no build isolation
        session.install("setuptools", "wheel", "pybind11")
        session.install("--no-build-isolation", "-e", f".{extras}", *requirements)
    else:
        session.install("-e", ".", *requirements)


@nox.session
def tests(session: nox.Session) -> None:
    """CPU unit tests, CPU correctness cases and the benchmark smoke; TE/GPU cases skip with reasons."""
    _install(session, "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def torchao(session: nox.Session) -> None:
    """Our recipe emulation against torchao 0.18 (tests/test_torchao_crosscheck.py), in an env of its own:
    transformers imports torchao when installed, so the main `tests` session must not have it."""
    _install(session, "torchao")
    session.run("python", "-m", "pytest", "tests/test_torchao_crosscheck.py", "-ra", *session.posargs)


@nox.session(default=HAS_GPU)
def correctness(session: nox.Session) -> None:
    """The parity suite on the GPU (torch and te backends), appending records to results/."""
    _install(session, "test", extras="[te]" if HAS_GPU else "")
    session.run("python", "-m", "pytest", "correctness", "--results-dir", RESULTS, "-ra", *session.posargs)


@nox.session(default=HAS_GPU)
def bench(session: nox.Session) -> None:
    """The benchmark sweep on the GPU (teswap bench), appending records to results/."""
    _install(session, extras="[te]" if HAS_GPU else "")
    session.run("teswap", "bench", "--results", RESULTS, *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Tables, charts and the static HTML site from the results store."""
    _install(session)
    session.run("teswap", "report", "--results", RESULTS, "--out", "results/report", "--html", "results/site",
                *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the library, tests, suites and this file."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "src", "tests", "correctness", "bench", "scripts", "noxfile.py", "conftest.py",
                *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the library."""
    _install(session, "lint")
    session.run("mypy", "src/teswap", *session.posargs)
