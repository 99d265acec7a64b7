"""Airflow and the MLflow UI on this machine, for a person (`make airflow`) or a benchmark (bench.airflow_overhead).

    python -m tasks.standalone [--airflow-home .airflow] [--port 8080] [--mlflow-port 5000] [--config .demo/config.yaml]

`airflow standalone` (SQLite, LocalExecutor) runs the project's DAG folder with this virtual environment on the
PATH; when the demo's config exists it pre-fills the trigger form. `mlflow ui` serves the tracking store that
config logs to. Both print their URLs once they answer; Ctrl-C stops both, with every process they started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PASSWORDS = "simple_auth_manager_passwords.json.generated"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """The Airflow REST API, with a bearer token from the standalone admin user."""

    def __init__(self, base: str):
        self.base = base
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def login(self, home: Path) -> None:
        passwords = home / PASSWORDS
        password = wait("admin password", lambda: passwords.exists() and json.loads(passwords.read_text()).get("admin"), timeout=60)
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]


def wait(what: str, probe, timeout: float, interval: float = 1.0):
    """probe() until it returns something true (connection errors count as not yet); its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError):
            pass  # not up yet
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")


def airflow_environment(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for an Airflow of its own in `home`, serving on 127.0.0.1:`port`. Nothing of the caller's
    Airflow or Evolver settings (a test session's, say) leaks into it; `extra` adds some back."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "EVOLVER_"))}
    return {
        **inherited,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(extra or {}),
    }


def start_airflow(home: Path, env: dict[str, str]) -> subprocess.Popen:
    """`airflow db migrate`, then `airflow standalone` in a session of its own (one killpg stops the scheduler,
    api-server, dag-processor and triggerer it spawns), logging to home/standalone.log."""
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(home / "standalone.log", "ab") as log:
        return subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_mlflow_ui(tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        command = [str(BIN / "mlflow"), "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port)]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Stop a process's whole group (workers and the tasks they forked included) and wait until it is gone."""
    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or the group never empties
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-home", type=Path, default=REPO / ".airflow")
    parser.add_argument("--port", type=int, default=8080, help="Airflow's UI and API")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--config", type=Path, default=REPO / ".demo" / "config.yaml", help="pre-fills the trigger form when it exists")
    args = parser.parse_args(argv)
    home = args.airflow_home.resolve()
    config = args.config.resolve()
    extra = {"AIRFLOW__CORE__PARALLELISM": "4"}
    tracking_uri = f"sqlite:///{REPO / '.demo' / 'mlflow.db'}"
    if config.is_file():
        import yaml

        extra["EVOLVER_DEFAULT_CONFIG"] = str(config)
        tracking_uri = yaml.safe_load(config.read_text()).get("tracking_uri") or tracking_uri
    # Ctrl-C and a plain kill both end in the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    processes = []
    try:
        processes.append(start_airflow(home, airflow_environment(home, args.port, extra)))
        processes.append(start_mlflow_ui(tracking_uri, args.mlflow_port, home / "mlflow-ui.log"))
        print(f"starting Airflow (log {home / 'standalone.log'}) and the MLflow UI (log {home / 'mlflow-ui.log'}) ...", flush=True)
        wait("Airflow", lambda: _answers(f"http://127.0.0.1:{args.port}/api/v2/monitor/health"), timeout=240)
        wait("MLflow UI", lambda: _answers(f"http://127.0.0.1:{args.mlflow_port}/health"), timeout=120)
        wait("admin password", lambda: (home / PASSWORDS).exists(), timeout=60)
        print(f"Airflow:   http://127.0.0.1:{args.port}   user admin, password in {home / PASSWORDS}")
        print(f"MLflow UI: http://127.0.0.1:{args.mlflow_port}   tracking store {tracking_uri}")
        print("trigger form defaults: " + (str(config) if config.is_file() else "the config's own (run `make demo` first for the demo's)"))
        print("Ctrl-C stops both.", flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(1)
        print("a server stopped on its own; see its log above", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in processes:
            stop(process)


if __name__ == "__main__":
    raise SystemExit(main())
