"""Fault injection for retry tests: make a named point of a stage fail on its first try only.

    EVOLVER_INJECT_FAULTS="select.after_tracking,finalize.after_tracking"   points to break
    EVOLVER_FAULTS_STATE=/some/dir                                          remembers which already fired

A point fires once (a marker file records it), so the retried task runs through: this is how the tests prove
that a task which died after writing to MLflow or the store leaves no duplicate behind on its retry.
Without the variables every call is a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised at an injected fault point; never caught by the pipeline."""


def point(name: str) -> None:
    wanted = {p.strip() for p in os.environ.get("EVOLVER_INJECT_FAULTS", "").split(",") if p.strip()}
    if name not in wanted:
        return
    state = Path(os.environ.get("EVOLVER_FAULTS_STATE", ".evolver-faults"))
    state.mkdir(parents=True, exist_ok=True)
    try:
        (state / name).open("x").close()
    except FileExistsError:
        return
    raise InjectedFault(f"injected fault at {name} (first try only)")
