"""The fault matrix: `evolver run` disturbed in every way issue 11 lists, against real servers, each case judged
against one undisturbed run of the same config.

    python -m bench.reliability                     # every case: the table, then `faults_survived=<n> of <m>`
    python -m bench.reliability --cases kill s3     # only the cases whose name contains a pattern

The servers are real and local: a moto S3 server in this process (stopping it closes its port; a new one on
the same port serves the same objects, as a restarted MinIO would) and an `mlflow server` subprocess with a
SQLite backend. Every run is a subprocess (`evolver run --retries 4 --retry-delay 5`: 5, 10, 20, 40 s, the
CLI's equivalent of the DAG's task retries), so a SIGKILL is a real one. A retry after a kill is the same
command again with the same run id, which is what Airflow does when it starts a task's next try.

A case survives when the run ends with the undisturbed run's `fused_model_sha256` and a complete audit trail
(one `best_fitness` per generation, one child run per lineage row), or, where a fault cannot be survived by
design (a corrupted object in the store), when it fails cleanly: an error naming the object, no fused model.
The scheduler restart and concurrent DAG runs need Airflow: `--load` (bench.load).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.standalone import free_port, stop, wait

EVOLVER = str(Path(sys.executable).parent / "evolver")
BUCKET = "faults"
OUTAGE_S = 30


class S3Server:
    """moto's S3 server on a fixed port, which can be stopped and started again with its objects kept (moto's
    backends live in this process, not in the server thread)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


class MlflowServer:
    """`mlflow server` with a SQLite backend and proxied local artifacts, restartable on the same port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.folder / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True)
        wait("mlflow server", lambda: urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200, 180)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@dataclass
class Result:
    case: str
    injected: str
    outcome: str
    sha_match: bool | None  # None: the case ends, by design, without a fused model
    survived: bool
    seconds: float = 0.0


class Harness:
    """The population, the servers, the undisturbed run, and how a case runs `evolver run`."""

    def __init__(self, root: Path):
        from tests import tiny  # the tests' own population: real members, briefly fine-tuned, built in seconds

        self.root = root
        self.population = tiny.build(root / "population")
        self.run_config = tiny.run_config
        self.s3 = S3Server()
        self.mlflow = MlflowServer(root / "mlflow")
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "AWS_ACCESS_KEY_ID": "reliability",
            "AWS_SECRET_ACCESS_KEY": "reliability",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.s3.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("AWS_")})
        self.reference = ""

    def __enter__(self) -> Harness:
        import boto3

        self.s3.start()
        boto3.client("s3", endpoint_url=self.s3.url).create_bucket(Bucket=BUCKET)
        self.mlflow.start()
        return self

    def __exit__(self, *exc) -> None:
        self.mlflow.stop()
        self.s3.stop()

    def config(self, name: str, store: str = "file", **changes: Any) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        conf = {
            **self.run_config(self.population, folder),  # 3 members, dev in batches of 16 (8 per shard), held-out sets
            "base_model": str(self.population["base"]),
            "generations": 2,
            "baselines": False,
            "device": "cpu",
            "store": f"s3://{BUCKET}/{name}" if store == "s3" else str(folder / "store") if store == "file" else store,
            "tracking_uri": self.mlflow.url,
            "experiment": "reliability",
            "registered_model": None,
            **changes,
        }
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(conf))
        return path

    def evolver(self, run_id: str, config: Path, *, faults: str = "", cache: Path | None = None, retries: int = 4, background: bool = False):
        """`evolver run` of `config` as run id `run_id`: its exit code, or the running process."""
        folder = config.parent
        env = {**self.env, "EVOLVER_S3_CACHE": str(cache or folder / "s3-cache")}
        if faults:
            env.update(EVOLVER_INJECT_FAULTS=faults, EVOLVER_FAULTS_STATE=str(folder / f"faults-{run_id}"))
        command = [EVOLVER, "run", str(config), "--run-id", run_id, "--output", str(folder / f"out-{run_id}"), "--retries", str(retries), "--retry-delay", "5"]
        with open(folder / f"console-{run_id}.log", "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        return process if background else process.wait(timeout=1800)

    def summary(self, config: Path, run_id: str) -> dict[str, Any] | None:
        path = config.parent / f"out-{run_id}" / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def console(self, config: Path, run_id: str) -> str:
        return (config.parent / f"console-{run_id}.log").read_text(errors="replace")

    def store(self, config: Path, run_id: str):
        from tasks.store import open_store, run_key

        return open_store(yaml.safe_load(config.read_text())["store"]).scoped(run_key(run_id))

    def judge(self, config: Path, run_id: str, reference: str | None = None) -> tuple[bool, str]:
        """(sha matches the reference, what is wrong with the run or its audit trail: '' when nothing)."""
        from tasks import tracking

        summary = self.summary(config, run_id)
        if summary is None:
            return False, "no summary: " + self.console(config, run_id).strip().splitlines()[-1][:200]
        match = summary["fused_model_sha256"] == (reference or self.reference)
        client = tracking.client_for(self.mlflow.url)
        steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "best_fitness")]
        experiment = client.get_run(summary["mlflow_run_id"]).info.experiment_id
        children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}'", max_results=1000)
        problems = []
        if steps != list(range(len(summary["generations"]))):
            problems.append(f"best_fitness steps {steps}")
        if len(children) != len(summary["lineage"]):
            problems.append(f"{len(children)} child runs for {len(summary['lineage'])} lineage rows")
        if not match:
            problems.append("another fused model")
        return match, "; ".join(problems)


def _survived(match: bool, problems: str, ok_outcome: str) -> tuple[str, bool | None, bool]:
    return (ok_outcome if not problems else problems), match, match and not problems


# -- the cases ----------------------------------------------------------------------------------------------


def killed_at(point: str, store: str) -> Callable[[Harness, str], tuple[str, bool | None, bool]]:
    def case(h: Harness, name: str):
        config = h.config(name, store)
        first = h.evolver(name, config, faults=f"{point}=kill")
        if first != -9:
            return f"the kill did not happen (exit {first})", None, False
        h.evolver(name, config, faults=f"{point}=kill")  # the point remembers it fired: this is the retry
        match, problems = h.judge(config, name)
        return _survived(match, problems, "killed (exit -9), the retry finished")

    return case


def _in_generation(h: Harness, config: Path, run_id: str, generation: int, process: subprocess.Popen) -> None:
    def started():
        if process.poll() is not None:
            raise RuntimeError(f"the run ended (exit {process.returncode}) before generation {generation}")
        return h.store(config, run_id).list_keys(f"gen={generation}")

    wait(f"generation {generation} of {run_id}", started, 600, interval=0.2)


def _outage(h: Harness, name: str, store: str, server: S3Server | MlflowServer) -> tuple[Path, bool, str]:
    """A run whose `server` stops for OUTAGE_S seconds once its generation 1 has begun, then starts again."""
    config = h.config(name, store)
    process = h.evolver(name, config, background=True)
    _in_generation(h, config, name, 1, process)
    server.stop()
    time.sleep(OUTAGE_S)
    server.start()
    process.wait(timeout=1800)
    return config, *h.judge(config, name)


def s3_outage(h: Harness, name: str):
    config, match, problems = _outage(h, name, "s3", h.s3)
    retried = h.console(config, name).count("; retry ")
    return _survived(match, problems, f"finished; {retried} stage retries logged")


def mlflow_outage(h: Harness, name: str):
    config, match, problems = _outage(h, name, "file", h.mlflow)
    summary = h.summary(config, name)
    if summary is not None:
        audit = [EVOLVER, "audit", summary["mlflow_run_id"], "--tracking-uri", h.mlflow.url, "--verify"]
        verified = subprocess.run(audit, env=h.env, capture_output=True, text=True, timeout=600)
        if verified.returncode != 0:
            problems = "; ".join(filter(None, [problems, f"evolver audit --verify exit {verified.returncode}"]))
    return _survived(match, problems, "finished; `evolver audit --verify` matches")


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def corrupted_object(h: Harness, name: str):
    """An object of the S3 store whose bytes changed after it was written (its recorded sha256 stays): a read
    must refuse it. Nothing can rebuild a member's weights, so the run fails, naming the object."""
    import boto3

    config = h.config(name, "s3")
    if h.evolver(name, config, faults="evaluate.before_write=kill") != -9:
        return "the kill did not happen", None, False
    s3 = boto3.client("s3", endpoint_url=h.s3.url)
    key = next(k for k in h.store(config, name).list_keys("members") if k.endswith(".safetensors"))  # read by every merge
    full = f"{name}/{h.store(config, name).prefix}/{key}"
    head = s3.head_object(Bucket=BUCKET, Key=full)
    s3.put_object(Bucket=BUCKET, Key=full, Body=_flip(s3.get_object(Bucket=BUCKET, Key=full)["Body"].read()), Metadata=head["Metadata"])
    code = h.evolver(name, config, faults="evaluate.before_write=kill", cache=config.parent / "fresh-cache")
    last = h.console(config, name).strip().splitlines()[-1]
    clean = code == 2 and key in last and "corrupt" in last and h.summary(config, name) is None
    outcome = f"refused, exit {code}: …{last[last.find('object'):][:90]}" if clean else f"exit {code}: {last[:200]}"
    return outcome, None, clean


def corrupted_cache(h: Harness, name: str):
    config = h.config(name, "s3")
    cache = config.parent / "s3-cache"
    if h.evolver(name, config, faults="evaluate.before_write=kill", cache=cache) != -9:
        return "the kill did not happen", None, False
    cached = [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for path in cached:
        path.write_bytes(_flip(path.read_bytes()))
    h.evolver(name, config, faults="evaluate.before_write=kill", cache=cache)
    match, problems = h.judge(config, name)
    return _survived(match, problems, f"{len(cached)} cached files corrupted, all fetched again")


def two_runs_one_store(h: Harness, name: str):
    """Two configs (another seed, another merger) in one S3 prefix and one MLflow experiment at once."""
    other = {"seed": 7, "merger": "ties"}
    solo = h.config(f"{name}-solo", "s3", **other)
    h.evolver(f"{name}-solo", solo)
    alone = (h.summary(solo, f"{name}-solo") or {}).get("fused_model_sha256")
    shared = f"s3://{BUCKET}/{name}"
    first, second = h.config(f"{name}-a", shared), h.config(f"{name}-b", shared, **other)
    processes = [h.evolver(f"{name}-a", first, background=True), h.evolver(f"{name}-b", second, background=True)]
    for process in processes:
        process.wait(timeout=1800)
    match_a, problems_a = h.judge(first, f"{name}-a")
    match_b, problems_b = h.judge(second, f"{name}-b", alone)
    problems = "; ".join(f"{run}: {p}" for run, p in (("a", problems_a), ("b", problems_b)) if p)
    return _survived(match_a and match_b, problems, "both finished, each equal to its solo run")


def cleared_generation(h: Harness, name: str):
    """A finished run whose generation 1 and everything after it is cleared (tasks and their objects), then
    run again under the same id, as a user clears a generation's tasks from the UI after a failure."""
    config = h.config(name, "file")
    h.evolver(name, config)
    root = Path(yaml.safe_load(config.read_text())["store"])
    from tasks.store import run_key

    cleared = [p for p in (root / run_key(name)).iterdir() if p.name in ("gen=1", "gen=2", "final")]
    for folder in cleared:
        shutil.rmtree(folder)
    h.evolver(name, config)
    match, problems = h.judge(config, name)
    return _survived(match, problems, f"cleared {', '.join(p.name for p in cleared)}; the rerun gave the same model and no duplicate entry")


def disk_full(h: Harness, name: str):
    """The file store on a tmpfs too small for the run: a clear error, then the retry after space is freed."""
    config = h.config(name, "file")
    mount = Path(yaml.safe_load(config.read_text())["store"])
    mount.mkdir(parents=True)
    reference_store = h.root / "undisturbed" / "store"
    needed = sum(p.stat().st_size for p in reference_store.rglob("*") if p.is_file())
    size_kib = max(needed // 2 // 1024, 64)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        return f"not run: a size-limited tmpfs needs root ({mounted.stderr.strip()[:100]})", None, False
    try:
        code = h.evolver(name, config, retries=0)
        last = h.console(config, name).strip().splitlines()[-1]
        clear = "No space left on device" in last and "store" in last
        subprocess.run(["mount", "-o", f"remount,size={4 * needed // 1024}k", str(mount)], check=True)
        h.evolver(name, config)
        match, problems = h.judge(config, name)
        if not clear:
            problems = "; ".join(filter(None, [problems, f"unclear error (exit {code}): {last[:200]}"]))
        return _survived(match, problems, f"failed at {size_kib} KiB (exit {code}: …{last[last.find('writing'):][:70]}); the retry after a remount finished")
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def champion_race(h: Harness, name: str):
    """Two runs reach the champion gate of one registered model at the same moment (both killed just before it,
    then resumed together, each slowed inside the gate): one decides first, the other is compared against it."""
    from tasks import tracking

    model = f"{name}-fused"
    configs = {f"{name}-a": h.config(f"{name}-a", "file", registered_model=model), f"{name}-b": h.config(f"{name}-b", "file", registered_model=model, seed=7)}
    for run_id, config in configs.items():
        if h.evolver(run_id, config, faults="promote.before_gate=kill") != -9:
            return f"{run_id}: the kill did not happen", None, False
    # Resumed together, each pauses 5 s inside the gate, between reading the champion and moving the alias:
    # without the gate's lock both would read "no champion" and both be promoted.
    faults = "promote.before_gate=kill,promote.in_gate=pause:5"
    processes = {run_id: h.evolver(run_id, config, faults=faults, background=True) for run_id, config in configs.items()}
    for process in processes.values():
        process.wait(timeout=1800)
    decisions = {run_id: (h.summary(config, run_id) or {}).get("promotion") for run_id, config in configs.items()}
    if not all(decisions.values()):
        return f"a run did not finish: {decisions}", None, False
    first = [r for r, d in decisions.items() if d["champion_before"] is None]
    client = tracking.client_for(h.mlflow.url)
    champion = client.get_model_version_by_alias(model, tracking.CHAMPION).version
    if len(first) != 1:
        return f"{len(first)} runs saw no champion: both decided on the same stale state", None, False
    later = decisions[next(r for r in decisions if r not in first)]
    expected = later["version"] if later["promoted"] else decisions[first[0]]["version"]
    consistent = str(champion) == str(expected) and (not later["promoted"] or later["margins"]["dev"] > 0)
    outcome = f"{first[0][-1]} decided first; the other {'beat' if later['promoted'] else 'did not beat'} it ({later['decided_by']}); champion v{champion}"
    return outcome, None, consistent


CASES: list[tuple[str, str, Callable]] = [
    ("kill evaluate mid-forward", "SIGKILL after a shard's first batch", killed_at("evaluate.mid_forward", "file")),
    ("kill offspring mid-write (file)", "SIGKILL with an offspring half written", killed_at("make_offspring.mid_stream", "file")),
    ("kill offspring mid-write (S3)", "SIGKILL with an offspring half uploaded", killed_at("make_offspring.mid_stream", "s3")),
    ("kill evaluate before its write", "SIGKILL with a shard scored, not stored", killed_at("evaluate.before_write", "s3")),
    ("kill select before its marker", "SIGKILL after state and MLflow, before the marker", killed_at("select.after_tracking", "file")),
    ("S3 outage", f"the S3 server stopped {OUTAGE_S} s in generation 1", s3_outage),
    ("MLflow outage", f"the MLflow server stopped {OUTAGE_S} s in generation 1", mlflow_outage),
    ("corrupted object", "a byte flipped in a stored checkpoint", corrupted_object),
    ("corrupted cache", "a byte flipped in every cached S3 object", corrupted_cache),
    ("two runs, one store", "two configs at once in one S3 prefix and experiment", two_runs_one_store),
    ("cleared generation", "generations 1-2 and final cleared, rerun", cleared_generation),
    ("disk full", "the file store on a tmpfs half the run's size", disk_full),
    ("champion race", "two runs at the champion gate at once", champion_race),
]


def run_matrix(root: Path, patterns: list[str] | None = None, log=print) -> list[Result]:
    results = []
    with Harness(root) as h:
        started = time.perf_counter()
        config = h.config("undisturbed", "file")
        if h.evolver("undisturbed", config) != 0:
            raise RuntimeError("the undisturbed run failed:\n" + h.console(config, "undisturbed")[-3000:])
        h.reference = h.summary(config, "undisturbed")["fused_model_sha256"]
        log(f"undisturbed run: {time.perf_counter() - started:.0f} s, fused_model_sha256 {h.reference[:16]}")
        for i, (case, injected, function) in enumerate(CASES):
            if patterns and not any(p in case for p in patterns):
                continue
            started = time.perf_counter()
            try:
                outcome, match, survived = function(h, f"case{i:02d}")
            except Exception as err:  # noqa: BLE001 - a harness error is this case's outcome, the others still run
                outcome, match, survived = f"harness error: {type(err).__name__}: {str(err)[:200]}", None, False
            results.append(Result(case, injected, outcome, match, survived, round(time.perf_counter() - started, 1)))
            log(f"{case}: {'survived' if survived else 'NOT SURVIVED'} ({results[-1].seconds:.0f} s) {outcome}")
    return results


def report(results: list[Result]) -> str:
    lines = ["| case | injected | outcome | sha256 match | survived | s |", "|---|---|---|---|---|---|"]
    for r in results:
        sha = {True: "yes", False: "**no**", None: "n/a"}[r.sha_match]
        lines.append(f"| {r.case} | {r.injected} | {r.outcome.replace('|', '/')} | {sha} | {'yes' if r.survived else '**no**'} | {r.seconds:.0f} |")
    return "\n".join(lines)
