"""What a person sees: `evolver run`'s one line per stage and generation, `make demo` under 60 lines on a cached
run, fine-tuning's progress bar, and `make airflow` serving both UIs and stopping them on Ctrl-C."""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tasks.progress import QUIET, Bar, planned_evaluations

REPO = Path(__file__).resolve().parents[1]
EVOLVER = str(Path(sys.executable).parent / "evolver")
# The libraries' own defaults: what `--verbose` must bring back, whatever this test session set.
PLAIN_ENV = {key: value for key, value in os.environ.items() if key not in QUIET}


def _progress_lines(stdout: str) -> list[str]:
    return stdout[: stdout.index("{\n")].splitlines()


def _stage(line: str) -> str:
    match = re.fullmatch(r"\[ *\d+s\] ([^:]+): .*", line)
    assert match, line
    return match.group(1)


@pytest.mark.parametrize("mode, schedule", [("merge", "generational"), ("plain", "sequential")])
def test_evolver_run_prints_one_line_per_stage_and_generation(tiny_config, tmp_path, mode, schedule):
    out = tmp_path / "out"
    command = [EVOLVER, "run", str(tiny_config), "--output", str(out), "--set", f"mode={mode}", "--set", f"schedule={schedule}"]
    done = subprocess.run(command, capture_output=True, text=True, env=PLAIN_ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    lines = _progress_lines(done.stdout)
    generations = [f"generation {g}/3" for g in range(4)]
    assert [_stage(line) for line in lines] == ["models", "population", *generations, "finalize", "registry"]
    for line, record in zip(lines[2:6], summary["generations"]):
        assert f"best macro_f1 {record['best_fitness']:.4f}, mean {record['mean_fitness']:.4f}, accepted {record['accepted']};" in line
        assert f"evaluations {record['evaluations']} done" in line
    cfg_evaluations = planned_evaluations(type("Cfg", (), {"models": [0, 0, 0], "mode": mode, "schedule": schedule, "generations": 3})())
    if schedule == "sequential":  # one offspring per member and generation: the plan is exact
        assert summary["generations"][-1]["evaluations"] == cfg_evaluations
    assert summary["generations"][-1]["evaluations"] <= cfg_evaluations and lines[5].endswith("none left")
    assert summary["fused_model_sha256"][:12] in lines[6] and f"dev macro_f1 {summary['final']['fitness']:.4f}" in lines[6]
    assert summary["promotion"]["reason"] in lines[7]
    # The libraries' chatter stays out of the console...
    assert "INFO mlflow" not in done.stderr and "Writing model shards" not in done.stderr, done.stderr

    # ...unless asked for: a fresh tracking database logs its migration.
    verbose = subprocess.run(
        [*command[:3], *command[5:], "--verbose", "--set", f"tracking_uri=sqlite:///{tmp_path / 'verbose.db'}", "--set", f"store={tmp_path / 'verbose-store'}"],
        capture_output=True,
        text=True,
        env=PLAIN_ENV,
        timeout=600,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables" in verbose.stderr
    assert json.loads(verbose.stdout[verbose.stdout.index("{\n") :])["fused_model_sha256"] == summary["fused_model_sha256"]


def test_progress_bar_logs_a_line_per_quarter_when_not_on_a_terminal():
    lines: list[str] = []
    bar = Bar(10, "airline ", lines.append)
    for step in range(1, 11):
        bar.update(step, f"loss {1 / step:.4f}")
    assert [re.search(r"step (\d+)/10", line).group(1) for line in lines] == ["3", "5", "8", "10"]
    assert lines[-1].startswith("  airline [" + "#" * Bar.WIDTH + "] step 10/10 loss 0.1000")


def test_the_demo_prints_under_60_lines_on_a_cached_run(tmp_path):
    from tasks.demo import build_demo_population

    workdir = tmp_path / "demo"
    build_demo_population(workdir, quick=True, log=lambda _: None)  # the members, fine-tuned: the cached run follows
    env = {**PLAIN_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tasks.demo", "--quick", "--workdir", str(workdir)], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) < 60, done.stdout
    stages = [_stage(line) for line in lines if re.match(r"\[ *\d+s\] [a-z0-9/ ]+: ", line)]
    assert stages == ["models", "population", *[f"generation {g}/5" for g in range(6)], "finalize", "registry"], done.stdout
    assert "| model | dev macro-F1 | in-domain macro-F1 | out-of-domain macro-F1 |" in lines
    assert any(line.startswith("| Evolver + average |") for line in lines)
    [log_line] = [line for line in lines if "Airflow's log:" in line]
    airflow_log = Path(log_line.split("Airflow's log: ")[1])
    assert "[DAG TEST]" in airflow_log.read_text() and "[DAG TEST]" not in done.stdout + done.stderr


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


def test_make_airflow_serves_both_uis_with_the_demo_defaults_and_stops_them_on_ctrl_c(tiny_config, tmp_path):
    from tasks.standalone import Api, free_port, wait

    port, mlflow_port = free_port(), free_port()
    home = tmp_path / "airflow"
    command = [sys.executable, "-m", "tasks.standalone", "--airflow-home", str(home), "--port", str(port), "--mlflow-port", str(mlflow_port), "--config", str(tiny_config)]
    # Ctrl-C reaches a foreground job with SIGINT at its default; a job started in the background of a script
    # inherits it ignored, and Python then installs no KeyboardInterrupt handler. Start it as a terminal would.
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    printed = []
    try:
        for line in process.stdout:
            printed.append(line)
            if line.startswith("Ctrl-C stops both"):
                break
        text = "".join(printed)
        assert f"Airflow:   http://127.0.0.1:{port}" in text and f"MLflow UI: http://127.0.0.1:{mlflow_port}" in text, text
        assert str(home / "simple_auth_manager_passwords.json.generated") in text
        assert yaml.safe_load(tiny_config.read_text())["tracking_uri"] in text
        assert _get(f"http://127.0.0.1:{mlflow_port}/health") == 200
        api = Api(f"http://127.0.0.1:{port}")
        api.login(home)
        # The dag-processor parses the DAG file a little after the API answers.
        params = wait("DAG evolver", lambda: api.call("GET", "/api/v2/dags/evolver/details")["params"], timeout=180, interval=2)
        assert params["generations"]["value"] == 3 and params["shards"]["value"] == 2  # the config's, not the defaults (15, 1)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    for url in (f"http://127.0.0.1:{port}/api/v2/monitor/health", f"http://127.0.0.1:{mlflow_port}/health"):
        with pytest.raises(OSError):
            _get(url)
