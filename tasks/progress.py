"""What a person watching a run reads: one line per stage and generation, and a bar while fine-tuning.

    [    20s] models: 3 members in the store
    [    21s] population: dev 450, heldout/airline 300, heldout/claritin 300, ...
    [    25s] generation 0/5: best macro_f1 0.3275, mean 0.3275, accepted 0; evaluations 1 done, at most 20 left
    ...
    [   113s] finalize: dev macro_f1 0.5466, held-out in-domain 0.4141, held-out out-of-domain 0.2918; fused model sha256 cf18a08ed707
    [   115s] registry: no champion yet: version 1 becomes champion

The lines come from the run's completion markers in the store, not from the driver: `RunReport.poll` reads
whichever markers appeared since its last call. The CLI polls after each stage; `make demo` polls from a
thread while `airflow dags test` runs (its full log goes to a file), so both drivers print the same lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Log = Callable[[str], object]

# Library chatter that buries the progress lines: MLflow's INFO lines (database migrations), transformers' and
# the hub's progress bars (one per saved model), transformers' advisory warnings. Read when each library is
# first imported, so set before; a value the user set wins, and `--verbose` leaves them all alone.
QUIET = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # With an MLflow server, its client prints two "View run" lines each time a run ends (one per offspring).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def quiet_libraries() -> None:
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)


class Bar:
    """A loop of `total` steps: redrawn in place on a terminal; elsewhere (a log file, CI) a line at each
    quarter, so a captured log stays short."""

    WIDTH = 24

    def __init__(self, total: int, label: str = "", log: Log = print):
        self.total, self.label, self.log = max(1, total), label, log
        self.inplace = log is print and sys.stdout.isatty()
        self.started = time.perf_counter()
        self.quarter = 0

    def update(self, step: int, note: str = "") -> None:
        done = step * self.WIDTH // self.total
        text = f"  {self.label}[{'#' * done}{'.' * (self.WIDTH - done)}] step {step}/{self.total} {note} {time.perf_counter() - self.started:.0f}s"
        if self.inplace:
            sys.stdout.write("\r" + text + ("\n" if step >= self.total else ""))
            sys.stdout.flush()
        elif step * 4 // self.total > self.quarter or step >= self.total:
            self.quarter = step * 4 // self.total
            self.log(text)


def planned_evaluations(cfg: Any) -> int:
    """The most candidate evaluations a run can make: generation 0 scores the members (plain) or their merge;
    each later generation one offspring per member, plus, in the generational merge schedule, the improvers
    combined when more than one improved."""
    n = len(cfg.models)
    first = n if cfg.mode == "plain" else 1
    combined = 1 if cfg.mode == "merge" and cfg.schedule == "generational" else 0
    return first + cfg.generations * (n + combined)


def _short(value: float) -> str:
    return f"{value:.4f}"


class RunReport:
    """Reads one run's markers as they appear and logs a line for each."""

    def __init__(self, cfg: Any, log: Log = print, started: float | None = None):
        self.cfg, self.log = cfg, log
        self.started = time.perf_counter() if started is None else started
        self.planned = planned_evaluations(cfg)
        self.metric = "mean of tasks" if cfg.cross_task else cfg.metric
        self.seen: set[str] = set()

    def line(self, text: str) -> None:
        self.log(f"[{time.perf_counter() - self.started:6.0f}s] {text}")

    def poll(self, store: Any) -> bool:
        """Log the markers of `store` (a run's scoped store) that appeared since the last call, in the order the
        run writes them; True once the run's last marker is in."""
        from tasks.stages import generation_record
        from tasks.store import StoreUnavailable

        steps: list[tuple[str, Callable[[dict], str]]] = [
            ("run.json", lambda record: f"models: {len(record['models'])} members in the store"),
            ("init.json", lambda init: "population: " + ", ".join(f"{name} {size}" for name, size in init["examples"].items() if size)),
        ]
        for g in range(self.cfg.generations + 1):
            steps.append((f"gen={g}/population.json", lambda state: self._generation(generation_record(self.cfg, state))))
        steps += [("final/summary.json", self._final), ("final/promotion.json", lambda decision: f"registry: {decision['reason']}")]
        for key, describe in steps:
            if key in self.seen:
                continue
            try:
                record = store.get_json_or_none(key)
            except StoreUnavailable:  # progress lines wait for the store; the stages' retries deal with it
                return False
            if record is None:
                return False
            self.seen.add(key)
            self.line(describe(record))
        return True

    def _generation(self, record: dict[str, Any]) -> str:
        done = record["evaluations"]
        left = self.planned - done
        if record["generation"] == self.cfg.generations:
            left = 0
        return (
            f"generation {record['generation']}/{self.cfg.generations}: best {self.metric} {_short(record['best_fitness'])}, "
            f"mean {_short(record['mean_fitness'])}, accepted {record['accepted']}; evaluations {done} done, "
            + (f"at most {left} left" if left else "none left")
        )

    def _final(self, summary: dict[str, Any]) -> str:
        final = summary["final"]
        text = f"finalize: dev {self.metric} {_short(final['fitness'])}"
        means = final.get("heldout_mean") or {}
        for group in ("in_domain", "out_of_domain"):
            if group in means and self.cfg.metric in means[group]:
                text += f", held-out {group.replace('_', '-')} {_short(means[group][self.cfg.metric])}"
        return f"{text}; fused model sha256 {summary['fused_model_sha256'][:12]}"


def follow_new_run(store_root: Path, cfg: Any, stop: threading.Event, log: Log = print, started: float | None = None, every: float = 1.0) -> threading.Thread:
    """Watch a local store for the run that starts after this call (its run.json appears) and log its lines
    until its last marker or `stop`. For a driver that does not say its run id (`airflow dags test`)."""
    from tasks.store import LocalStore

    before = {path.parent.name for path in Path(store_root).glob("*/run.json")}
    report = RunReport(cfg, log, started)

    def watch() -> None:
        run = None
        while True:
            stopping = stop.is_set()  # read first: a last poll after the driver ended still sees its markers
            if run is None:
                new = sorted(path.parent.name for path in Path(store_root).glob("*/run.json") if path.parent.name not in before)
                run = LocalStore(store_root).scoped(new[0]) if new else None
            if run is not None and report.poll(run):
                return
            if stopping:
                return
            stop.wait(every)

    thread = threading.Thread(target=watch, name="evolver-progress", daemon=True)
    thread.start()
    return thread
