"""nox sessions. `nox -s tests` is what the README test command runs; GPU sessions come with the runner work."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
# torch first and pinned: on our CPU machines 2.13.0 is a local CPU wheel; unpinned pulls CUDA builds.
TORCH_PIN = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    """CPU unit tests (TE/GPU tests skip with the probe's reason); posargs go to pytest."""
    session.install(TORCH_PIN)
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the library, tests and this file."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "src", "tests", "noxfile.py")
