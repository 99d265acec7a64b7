"""What a real scheduler costs: the demo DAG under `airflow standalone` against `evolver run` on the same config.

    python -m bench.airflow_overhead [--repeats N] [--untuned] [--quick] [--workdir DIR] [--parallelism 4]

It builds (or reuses) the demo population, starts Airflow on 127.0.0.1 in a fresh AIRFLOW_HOME (SQLite,
LocalExecutor, the worker settings the README recommends), triggers the DAG through the REST API as the UI
does, and waits for it. Then it stops every Airflow process and runs `evolver run` on the same config (`--repeats`
alternates the two). It prints the wall times, where the DAG's task time went, and, last,
`ratio=<x> sha_match=<true|false>`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tasks.demo import build_demo_population
from tasks.standalone import Api, airflow_environment, free_port, start_airflow, stop, wait

DAG_ID = "evolver"
# The worker settings the project recommends for CPU workers (README, "Running it under Airflow"): task
# processes inherit torch and transformers (tasks/preload.py), evaluate tasks run one thread each, as many at
# once as there are cores (a pool).
EVALUATE_POOL = "evolver_evaluate"
TUNED = {
    "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
    "AIRFLOW__CORE__MP_FORKSERVER_PRELOAD": "tasks.preload",
    "EVOLVER_EVALUATE_THREADS": "1",
    "EVOLVER_EVALUATE_POOL": EVALUATE_POOL,
}


def _standalone(home: Path, conf: dict, parallelism: int, tuned: bool) -> tuple[subprocess.Popen, Api]:
    port = free_port()
    extra = {
        **(TUNED if tuned else {}),
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "EVOLVER_MAX_GENERATIONS": str(conf["generations"]),
        "EVOLVER_MAX_ROUNDS": "2",
    }
    process = start_airflow(home, airflow_environment(home, port, extra))
    try:
        return process, _ready(Api(f"http://127.0.0.1:{port}"), home, tuned)
    except BaseException:
        stop(process)
        raise


def _ready(api: Api, home: Path, tuned: bool) -> Api:
    """Wait for the api-server, log in as the standalone admin, create the evaluate pool, unpause the DAG."""
    wait("api-server", lambda: api.call("GET", "/api/v2/monitor/health"), timeout=180)
    api.login(home)
    if tuned:
        api.call("POST", "/api/v2/pools", {"name": EVALUATE_POOL, "slots": os.cpu_count(), "include_deferred": False})
    wait("DAG parsed", lambda: api.call("GET", f"/api/v2/dags/{DAG_ID}"), timeout=180)
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    return api


def _task_breakdown(api: Api, run_id: str) -> list[str]:
    """Task time by task kind, from the task instances' own durations (mapped instances included), and the
    time in which no task ran at all: the scheduler's share of the wall time."""
    quoted = urllib.request.quote(run_id, safe="")
    instances = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances?limit=1000")["task_instances"]
    durations: dict[str, list[float]] = defaultdict(list)
    spans = []
    for ti in instances:
        if ti.get("state") == "success" and ti.get("duration") is not None:
            durations[ti["task_id"].rsplit(".", 1)[-1]].append(float(ti["duration"]))
            spans.append((datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])))
    lines = [
        f"  {kind:16s} {len(values):3d} tasks, {sum(values):7.1f}s in all, {sum(values) / len(values):5.1f}s each (max {max(values):5.1f}s)"
        for kind, values in sorted(durations.items(), key=lambda kv: -sum(kv[1]))
    ]
    spans.sort()
    idle, reach = 0.0, spans[0][1]
    for start, end in spans[1:]:
        idle += max(0.0, (start - reach).total_seconds())
        reach = max(reach, end)
    return lines + [f"  no task running between the first start and the last end: {idle:.1f}s"]


def run_dag(workdir: Path, conf: dict, parallelism: int, tuned: bool = True) -> tuple[float, str, list[str]]:
    home = workdir / f"airflow-{os.getpid()}-{time.time_ns()}"
    home.mkdir(parents=True)
    process, api = _standalone(home, conf, parallelism, tuned)
    try:
        # The end is the run's own end_date, so polling slowly (and loading the api-server less) costs no precision.
        triggered = datetime.now(timezone.utc)
        run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        quoted = urllib.request.quote(run["dag_run_id"], safe="")
        ended = wait(
            "DAG run",
            lambda: (r := api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}"))["state"] in ("success", "failed") and r,
            timeout=3600,
            interval=3.0,
        )
        state = ended["state"]
        wall = (datetime.fromisoformat(ended["end_date"]) - triggered).total_seconds()
        if state != "success":
            raise RuntimeError(f"the DAG run {run['dag_run_id']} ended {state}; logs under {home}/logs")
        final = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/finalize/xcomEntries/return_value")
        value = final["value"] if isinstance(final["value"], dict) else json.loads(final["value"])
        return wall, value["fused_model_sha256"], _task_breakdown(api, run["dag_run_id"])
    finally:
        stop(process)


def run_cli(workdir: Path, conf: dict) -> tuple[float, str]:
    config = workdir / f"cli-{os.getpid()}.yaml"
    config.write_text(yaml.safe_dump(conf, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    started = time.perf_counter()
    out = subprocess.run([str(Path(sys.executable).parent / "evolver"), "run", str(config)], env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = json.loads(out.stdout[out.stdout.index("{\n") :])
    return wall, summary["fused_model_sha256"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "work" / "overhead")
    parser.add_argument("--parallelism", type=int, default=4, help="Airflow's [core] parallelism (4 suits 2 cores)")
    parser.add_argument("--untuned", action="store_true", help="Airflow's defaults: every task imports torch itself, evaluate tasks use every core")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two drivers this many times; the ratio is of the medians")
    parser.add_argument("--quick", action="store_true", help="the demo's tiny population and 2 generations: a smoke run of the benchmark itself")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    conf = yaml.safe_load(build_demo_population(workdir, quick=args.quick, log=lambda _: None).read_text())
    if args.quick:
        conf["generations"] = 2
    if args.untuned:
        conf["evaluate_tasks"] = None  # one evaluate task per (candidate, shard), as before packing existed
    # A SIGTERM (a CI timeout, say) still stops the Airflow processes this benchmark started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Each driver gets its own store and tracking database, so neither can reuse the other's work.
    conf_dag = {**conf, "store": str(workdir / "store-dag"), "tracking_uri": f"sqlite:///{workdir / 'mlflow-dag.db'}"}
    conf_cli = {**conf, "store": str(workdir / "store-cli"), "tracking_uri": f"sqlite:///{workdir / 'mlflow-cli.db'}"}

    workers = "Airflow's defaults" if args.untuned else "preloaded workers, single-threaded evaluate tasks in a pool of one slot per core"
    # This machine's speed drifts by minutes (the same in-process run took 158-213 s within an hour), so the
    # drivers alternate and the ratio is of the medians.
    dag_walls, cli_walls, shas = [], [], set()
    for repeat in range(args.repeats):
        dag_wall, dag_sha, breakdown = run_dag(workdir, conf_dag, args.parallelism, tuned=not args.untuned)
        print(f"[{repeat + 1}/{args.repeats}] airflow standalone (LocalExecutor, parallelism {args.parallelism}, {workers}): {dag_wall:.1f}s from trigger to success")
        print("\n".join(breakdown))
        cli_wall, cli_sha = run_cli(workdir, conf_cli)
        print(f"[{repeat + 1}/{args.repeats}] evolver run (in process): {cli_wall:.1f}s", flush=True)
        dag_walls.append(dag_wall)
        cli_walls.append(cli_wall)
        shas |= {dag_sha, cli_sha}
    dag_median, cli_median = statistics.median(dag_walls), statistics.median(cli_walls)
    print(f"median wall time: DAG {dag_median:.1f}s, in process {cli_median:.1f}s; fused_model_sha256 {', '.join(sorted(shas))}")
    print(f"ratio={dag_median / cli_median:.2f} sha_match={'true' if len(shas) == 1 else 'false'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
