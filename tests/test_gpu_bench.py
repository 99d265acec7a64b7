"""The GPU, offspring and memory benchmarks run end to end on the CPU (their --smoke sizes), so they are ready to run
the moment a GPU is there; their figures are in bench/README.md."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def last_line(module: str, *args: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_gpu_bench_smoke_reports_every_figure():
    figures = last_line("bench.gpu", "--smoke")
    assert set(figures) == {"candidates_per_min", "harness_over_bare", "offspring_ratio", "device", "dtype"}
    assert figures["device"] == "cpu" and figures["dtype"] == "float32"
    # Figures, not targets: at smoke sizes the timings are milliseconds and noise (targets live in bench/README.md).
    for key in ("candidates_per_min", "harness_over_bare", "offspring_ratio"):
        assert math.isfinite(float(figures[key])) and float(figures[key]) > 0, key


def test_offspring_bench_smoke_compares_with_the_copy_limit():
    figures = last_line("bench.offspring", "--smoke")
    assert figures["kernel"] == "numba" and figures["device"] == "cpu"
    ratio = float(figures["offspring_gbps"]) / float(figures["copy_gbps"])
    assert abs(ratio - float(figures["ratio"])) < 0.01


def test_memory_bench_smoke_measures_every_stage_and_runs_end_to_end(tmp_path):
    """bench.memory at tiny sizes: every stage's peak is measured in its own process (download, init, offspring,
    both statistics, a merged candidate of every method) and the end-to-end `evolver run` finishes."""
    output = tmp_path / "memory"
    figures = last_line("bench.memory", "--smoke", "--workdir", str(tmp_path / "work"), "--output", str(output))
    assert figures["e2e"] == "ok"
    import json

    from tasks.merge import MERGER_NAMES

    result = json.loads(output.with_suffix(".json").read_text())
    steps = [row["step"] for row in result["peaks"]]
    assert set(steps) == {"download", "init", "offspring", "statistics fisher", "statistics gram", *(f"merge {m}" for m in MERGER_NAMES)}
    for row in result["peaks"]:
        assert row["baseline_gb"] > 0 and math.isfinite(row["peak_gb"]), row
    assert result["end_to_end"]["returncode"] == 0 and result["end_to_end"]["peak_rss_gb"] > 0
    assert len(result["end_to_end"]["fused_model_sha256"]) == 64
    # Everything it built (checkpoints, stores, MLflow) is removed.
    assert not any((tmp_path / "work").iterdir())


def test_larger_than_ram_population_passes_the_machines_memory_by_the_factor_with_the_fewest_layers():
    from bench import memory

    label, hidden, layers, members = memory.larger_than_ram_sizes()
    target = memory.RAM_FACTOR * memory.ram_bytes()
    assert members * memory.model_bytes(hidden, layers) >= target > members * memory.model_bytes(hidden, layers - 1)
