"""Fault injection for retry tests: make a named point of a stage fail on its first try only.

    EVOLVER_INJECT_FAULTS="select.after_tracking,finalize.after_tracking"   points to break (an exception)
    EVOLVER_INJECT_FAULTS="make_offspring.mid_stream=kill"                  ...or SIGKILL the process there
    EVOLVER_INJECT_FAULTS="promote.in_gate=pause:5"                         ...or sleep there (a race window)
    EVOLVER_INJECT_FAULTS="select.after_tracking=outage"                    ...or raise a store outage there
    EVOLVER_FAULTS_STATE=/some/dir                                          remembers which already fired

A point fires once (a marker file records it, before the fault), so the retried task runs through: this is how
the tests prove that a task which died after writing to MLflow or the store, or was killed in the middle of a
write, leaves no duplicate and no partial object behind on its retry. Without the variables every call is a
no-op. The points: `make_offspring.mid_stream` (an offspring half streamed out), `evaluate.mid_forward` (after
a shard's first batch), `evaluate.before_write` (a shard scored, its result not yet written),
`select.after_tracking` (state and MLflow written, the generation's marker not), `finalize.after_tracking`,
`promote.before_gate` (a run registered, its champion gate not yet decided), `promote.in_gate` (the champion
read, the alias not yet moved).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised at an injected fault point; never caught by the pipeline."""


def point(name: str) -> None:
    wanted = dict(entry.strip().partition("=")[::2] for entry in os.environ.get("EVOLVER_INJECT_FAULTS", "").split(",") if entry.strip())
    if name not in wanted:
        return
    state = Path(os.environ.get("EVOLVER_FAULTS_STATE", ".evolver-faults"))
    state.mkdir(parents=True, exist_ok=True)
    try:
        (state / name).open("x").close()
    except FileExistsError:
        return
    mode, _, seconds = wanted[name].partition(":")
    if mode == "pause":  # a slow step, not a failure: it holds a race window open
        time.sleep(float(seconds or 5))
        return
    if mode == "kill":  # as the OOM killer or a lost node does: no exception handler, no cleanup
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "outage":  # what the store raises when it does not answer
        from tasks.store import StoreUnavailable

        raise StoreUnavailable(f"injected outage at {name} (first try only)")
    raise InjectedFault(f"injected fault at {name} (first try only)")
