"""The DAG under a real scheduler (`airflow standalone`, LocalExecutor, the recommended worker settings): it runs
to success from a REST trigger, gives the same fused model as `evolver run`, and leaves no process behind."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _processes_with(home: Path) -> list[int]:
    """Live processes whose AIRFLOW_HOME lies under `home`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(entry.startswith(b"AIRFLOW_HOME=" + str(home).encode()) for entry in environ):
            found.append(int(proc.name))
    return found


def test_dag_under_a_real_scheduler_matches_the_cli_and_stops_cleanly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.airflow_overhead", "--quick", "--workdir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio=\d+\.\d\d sha_match=true", lines[-1]), lines[-3:]
    # The breakdown counts each kind of task that succeeded. Every round that ran (one select each: generation 0
    # and each generation's first round, sometimes a second) packed its work items into the demo's 2 evaluate tasks.
    counts = {m[1]: int(m[2]) for line in lines if (m := re.match(r"\s+(\w+)\s+(\d+) tasks", line))}
    assert counts["select"] >= 3 and counts["evaluate"] == 2 * counts["select"], counts
    assert counts["finalize"] == 1 and counts["promote"] == 1, counts
    assert _processes_with(tmp_path) == []
