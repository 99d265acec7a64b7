"""The Airflow part of the reliability benchmark: a scheduler restart, and four DAG runs at once.

    python -m bench.reliability --load [--workdir DIR] [--output PATH]

On the fault matrix's servers (bench.fault_matrix: a moto S3 server, an `mlflow server`) and its tiny population,
it starts `airflow standalone` (LocalExecutor, SQLite) on 127.0.0.1 and, through the REST API as the UI does:
1. **restart**: triggers a run; while a task of its generation 1 runs, kills every Airflow process (scheduler, api-server,
   dag-processor, triggerer and the task processes: SIGKILL to the process group, as a lost node does),
   starts Airflow again on the same home, and waits: the task instances that died are found without a
   heartbeat, retried, and resume from the store;
2. **load**: four runs of four configs (seeds 1-4) at once (`max_active_runs` is 4), on the file store, then
   four more on S3, printing the wall time and the peak memory of all of Airflow's processes together.
Every run's `fused_model_sha256` must equal the in-process run (`evolver run`) of the same config, run alone.
The last line is `load_runs_equal_solo=<n> of <m>`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import yaml

from bench.fault_matrix import Harness
from tasks.standalone import Api, airflow_environment, free_port, start_airflow, stop, wait

DAG_ID = "evolver"
SEEDS = (1, 2, 3, 4)
ENVIRONMENT = {
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",  # a killed task is found in 30 s, not 5 min
    # A restarted scheduler resets the dead one's running tasks only at its orphan check, every 300 s by default
    # (its first check, at start, still finds the dead scheduler's heartbeat fresh): 5 minutes of nothing.
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
    "EVOLVER_RETRY_DELAY_SECONDS": "5",
    "EVOLVER_MAX_GENERATIONS": "2",
    "EVOLVER_MAX_ROUNDS": "3",  # the sequential schedule (the default) runs a round per member
}


class Airflow:
    """`airflow standalone` in one home, restartable on the same port and database."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.env = airflow_environment(home, self.port, ENVIRONMENT)
        self.api = Api(f"http://127.0.0.1:{self.port}")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_airflow(self.home, self.env)
        wait("api-server", lambda: self.api.call("GET", "/api/v2/monitor/health"), timeout=240)
        self.api.login(self.home)
        wait("DAG parsed", lambda: self.api.call("GET", f"/api/v2/dags/{DAG_ID}"), timeout=240)
        self.api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        stop(self.process)  # reaps whatever of the group is left

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def trigger(self, conf: dict[str, Any]) -> str:
        return self.api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]

    def state(self, run_id: str) -> str:
        return self.api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.request.quote(run_id, safe='')}")["state"]

    def finished(self, run_id: str, timeout: float = 3600) -> dict[str, Any]:
        quoted = urllib.request.quote(run_id, safe="")
        return wait(f"DAG run {run_id}", lambda: (r := self.api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}"))["state"] in ("success", "failed") and r, timeout, interval=3.0)

    def fused_sha(self, run_id: str) -> str | None:
        quoted = urllib.request.quote(run_id, safe="")
        try:
            entry = self.api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/finalize/xcomEntries/return_value")
        except OSError:
            return None
        value = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
        return value["fused_model_sha256"]

    def active_tasks(self, run_id: str) -> list[str]:
        """The run's task instances that are running or queued, as `task_id[map_index]: state`."""
        quoted = urllib.request.quote(run_id, safe="")
        instances = self.api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances?limit=1000")["task_instances"]
        return [f"{ti['task_id'].rsplit('.', 1)[-1]}[{ti['map_index']}]: {ti['state']}" for ti in instances if ti["state"] in ("running", "queued")]

    def tries(self, run_id: str) -> int:
        """Task tries beyond the first, over the run's task instances."""
        quoted = urllib.request.quote(run_id, safe="")
        instances = self.api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances?limit=1000")["task_instances"]
        return sum(max(0, (ti.get("try_number") or 1) - 1) for ti in instances)


class PeakMemory:
    """The peak of the summed RSS of a process and all its descendants, sampled twice a second."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            try:
                root = psutil.Process(self.pid)
                total = 0
                for process in [root, *root.children(recursive=True)]:
                    try:
                        total += process.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def solo_shas(h: Harness, store: str) -> dict[int, str]:
    """Each seed's config run alone, in process."""
    shas = {}
    for seed in SEEDS:
        name = f"solo-{store}-{seed}"
        config = h.config(name, store, seed=seed)
        if h.evolver(name, config) != 0:
            raise RuntimeError(f"the solo run {name} failed:\n{h.console(config, name)[-2000:]}")
        shas[seed] = h.summary(config, name)["fused_model_sha256"]
    return shas


def dag_conf(h: Harness, name: str, store: str, seed: int) -> dict[str, Any]:
    return yaml.safe_load(h.config(name, store, seed=seed).read_text())


def restart_case(h: Harness, airflow: Airflow, solo: dict[int, str]) -> dict[str, Any]:
    from tasks.store import open_store, run_key

    conf = dag_conf(h, "restart", "file", SEEDS[0])
    started = time.perf_counter()
    run_id = airflow.trigger(conf)
    store = open_store(conf["store"]).scoped(run_key(run_id))
    def running_in_generation_1():  # a task of generation 1 in the middle of its work, not a gap between tasks
        if airflow.state(run_id) == "failed":
            raise RuntimeError(f"the DAG run {run_id} failed before generation 1; logs under {airflow.home}/logs")
        running = [t for t in airflow.active_tasks(run_id) if t.endswith("running")]
        return store.list_keys("gen=1") and running

    active = wait("a task running in generation 1", running_in_generation_1, timeout=1800, interval=0.3)
    airflow.kill()
    killed_at = time.perf_counter() - started
    airflow.start()
    state = airflow.finished(run_id)["state"]
    sha = airflow.fused_sha(run_id)
    return {
        "case": "scheduler restart",
        "injected": f"SIGKILL to every Airflow process while a task of generation 1 ran ({killed_at:.0f} s in), then a restart",
        "active_at_kill": active,
        "state": state,
        "retried_tries": airflow.tries(run_id),
        "sha_match": sha == solo[SEEDS[0]],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def load_case(h: Harness, airflow: Airflow, store: str, solo: dict[int, str]) -> dict[str, Any]:
    started = time.perf_counter()
    with PeakMemory(airflow.process.pid) as memory:
        runs = {seed: airflow.trigger(dag_conf(h, f"load-{store}-{seed}", store, seed)) for seed in SEEDS}
        states = {seed: airflow.finished(run_id)["state"] for seed, run_id in runs.items()}
    shas = {seed: airflow.fused_sha(run_id) for seed, run_id in runs.items()}
    return {
        "case": f"4 runs at once ({store} store)",
        "states": states,
        "equal_solo": sum(shas[s] == solo[s] for s in SEEDS),
        "runs": len(SEEDS),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(memory.peak / 1e9, 2),
    }


def main(args) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the servers
    with ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(TemporaryDirectory(prefix="evolver-load-")))
        h = stack.enter_context(Harness(root))
        solo = {store: solo_shas(h, store) for store in ("file", "s3")}
        print(f"solo runs: {len(SEEDS)} seeds on each store; file and S3 agree: {solo['file'] == solo['s3']}", flush=True)
        airflow = Airflow(root / "airflow")
        stack.callback(airflow.stop)
        airflow.start()
        restart = restart_case(h, airflow, solo["file"])
        print(f"scheduler restart: killed with {restart['active_at_kill'] or 'no task'} active; {restart['state']}, {restart['retried_tries']} task retries, sha match {restart['sha_match']}, {restart['wall_s']:.0f} s", flush=True)
        loads = [load_case(h, airflow, store, solo[store]) for store in ("file", "s3")]
        for load in loads:
            print(f"{load['case']}: {load['equal_solo']} of {load['runs']} equal their solo run, {load['wall_s']:.0f} s, peak RSS of Airflow {load['peak_rss_gb']:.2f} GB", flush=True)
    from bench.run import machine

    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "restart": restart, "load": loads}
    if args.output:
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    equal = sum(load["equal_solo"] for load in loads) + int(restart["sha_match"])
    total = sum(load["runs"] for load in loads) + 1
    print(f"load_runs_equal_solo={equal} of {total}")
    return 0 if equal == total else 1
