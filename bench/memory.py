"""Memory of the stages on large models, and a run whose population is larger than the memory it may use.

    python -m bench.memory                 # peaks at three sizes, then the end-to-end run in a cgroup (about 25 GB of disk)
    python -m bench.memory --skip-peaks --larger-than-ram   # the end-to-end run on 1.1 x this machine's RAM
    python -m bench.memory --smoke         # tiny sizes, for `make test`

Part 1, peaks. For each (model size, population size) it builds a synthetic population: BERT-style sequence
classifiers with random weights (a pre-trained "base" plus a different perturbation per member) and the
offline MiniLM tokenizer. It runs `download_models` and `init_population` once, then every measured step in a
fresh process, so one step's allocations cannot hide another's:
- `download`: `download_models`, which copies every member into the store;
- `offspring`: `make_offspring`'s work for one individual (`_write_offspring`);
- `statistics <kind>`: the Fisher diagonals or RegMean Gram matrices of every member (`init_population`);
- `merge <method>`: a merged candidate of the whole population (`_scored_models`) scored on the dev data, as an
  `evaluate` task does, for every merging method.
A step's peak is the kernel's high-water mark of the process's resident set (VmHWM, reset once the imports
are done) minus its resident set at that point (the baseline). Targets (issue 10):
offspring <= 4 x the largest tensor + 1 GB, and a merged candidate <= 1 model + 1 GB, above the baseline.

Part 2, end to end. `evolver run` (G = 1, a dev set of a few examples) of a population larger than the memory
the run may use. By default the run is confined to a memory cgroup of `--limit-gb` (page cache included, no
swap), so a stage that held the population, or two models, would be killed. With `--larger-than-ram` the
population is sized to 1.1 x this machine's RAM and the run is not confined: the machine itself is the limit.
Its members are hard-linked into the store (`member_files: link`), so the disk holds the population twice
(members and one generation of offspring), not three times. The population's total size, the limit, the wall
time and the run's peak RSS are printed; the last line is
`memory_ok=<true|false> offspring_peak_gb= merge_above_model_gb= population_gb= limit_gb= e2e=<ok|failed|skipped>`.
Everything it builds lives under --workdir and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
GB = 1e9

# (label, hidden size, layers, members). The largest model is BERT-large-like in width with a 30522-token
# vocabulary, so its largest tensor (the word embeddings) is about half the size of a layer.
SIZES = [("small", 512, 4, 3), ("large", 1536, 8, 3), ("large", 1536, 8, 5)]
SMOKE_SIZES = [("tiny", 64, 2, 3)]
# The end-to-end population: 6 members of about 1.1 GB against a 5 GiB cgroup (model : memory about 1 : 4.7,
# as 5.2 GB models are to this machine's 24 GiB).
E2E = ("e2e", 1024, 20, 6)
E2E_LIMIT_GB = 5 * 2**30 / GB
# --larger-than-ram: six members of hidden 2048 (BERT-xl-like width), with as many layers as it takes for the
# population to pass RAM_FACTOR x this machine's memory (22 layers, 4.7 GB members, on 24 GiB).
RAM_FACTOR = 1.1
RAM_HIDDEN, RAM_MEMBERS = 2048, 6
DEV_ROWS = [
    ("the flight was delayed again and nobody told us anything", "negative"),
    ("great crew, smooth landing, would fly with them again", "positive"),
    ("boarding starts at gate 12 at noon", "neutral"),
    ("this phone keeps crashing since the update", "negative"),
    ("the new camera is honestly amazing", "positive"),
    ("the keynote is on tuesday", "neutral"),
]
LABELS = ("negative", "neutral", "positive")


# -- the synthetic population -------------------------------------------------------------------------


def bert_config(hidden: int, layers: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )


def build_population(folder: Path, hidden: int, layers: int, members: int, seed: int = 0, with_base: bool = True) -> dict[str, Any]:
    """A base checkpoint (unless not `with_base`) and `members` perturbed copies, each written tensor by tensor,
    plus a dev CSV."""
    import torch
    from transformers import BertForSequenceClassification

    from tasks.corpora import minilm_folder
    from tasks.store import widest_first, write_tensor_stream

    folder.mkdir(parents=True, exist_ok=True)
    config = bert_config(hidden, layers)
    with torch.device("meta"):
        shapes = {name: (t.dtype, tuple(t.shape)) for name, t in BertForSequenceClassification(config).state_dict().items()}
    specs = widest_first(shapes)
    tokenizer_files = [f for f in minilm_folder().iterdir() if f.name.startswith(("tokenizer", "vocab", "special_tokens"))]

    def checkpoint(name: str, member: int | None) -> Path:
        out = folder / name
        out.mkdir(exist_ok=True)
        config.save_pretrained(out)
        for file in tokenizer_files:
            shutil.copyfile(file, out / file.name)

        def tensors():
            for i, (tensor_name, (dtype, shape)) in enumerate(specs.items()):
                generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
                if not dtype.is_floating_point:  # position and token-type ids
                    yield tensor_name, torch.arange(math.prod(shape), dtype=dtype).reshape(shape) % shape[-1]
                    continue
                tensor = torch.randn(shape, generator=generator) * 0.02
                if member is not None:
                    tensor += torch.randn(shape, generator=generator.manual_seed(seed * 1_000_003 + i + 7919 * (member + 1))) * 0.002
                yield tensor_name, tensor.to(dtype)

        with open(out / "model.safetensors", "wb") as f:
            write_tensor_stream(f, specs, tensors(), metadata={"format": "pt"})
        return out

    base = checkpoint("base", None) if with_base else None
    folders = [checkpoint(f"member{i}", i) for i in range(members)]
    dev = folder / "dev.csv"
    dev.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in DEV_ROWS))
    floats = {n: s for n, (d, s) in specs.items() if d.is_floating_point}
    model_bytes = sum(math.prod(s) * specs[n][0].itemsize for n, s in floats.items())
    largest = max(math.prod(s) * specs[n][0].itemsize for n, s in floats.items())
    return {
        "base": str(base) if base else None,
        "members": [str(f) for f in folders],
        "dev": str(dev),
        "parameters": sum(math.prod(s) for s in floats.values()),
        "model_gb": model_bytes / GB,
        "largest_tensor_gb": largest / GB,
        "population_gb": members * model_bytes / GB,
    }


def run_config(population: dict[str, Any], workdir: Path, merger: str = "average", member_files: str = "copy") -> dict[str, Any]:
    return {
        "models": population["members"],
        "member_files": member_files,
        "base_model": population["base"],
        "data": {"dev": population["dev"], "heldout": {"dev_again": population["dev"]}, "batch_size": 8, "max_length": 32},
        "merger": merger,
        "generations": 1,
        "baselines": False,
        "device": "cpu",
        "store": str(workdir / "store"),
        "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "registered_model": None,
    }


# -- peaks, one step per fresh process ----------------------------------------------------------------------


def _proc_bytes(path: str, field: str) -> int:
    """A `field:  <n> kB` line of a /proc file, in bytes."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{path} has no {field}")


def _status(field: str) -> int:
    return _proc_bytes("/proc/self/status", field)


def _step(step: str, conf: dict[str, Any], run_id: str, queue) -> None:
    """Child process: import everything, reset the high-water mark, run one step, report its peak."""
    import torch

    torch.set_num_threads(1)
    # Everything a step may import is part of the baseline: the peak is then the step's own data.
    import mlflow  # noqa: F401
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401

    from tasks import crossover, evolve, modelpool, stages, taskpool, tracking  # noqa: F401
    from tasks.merge import statistics  # noqa: F401

    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    started = time.perf_counter()
    if step == "download":
        stages.download_models(conf, run_id)
    elif step == "offspring":
        run = stages.Run(conf, run_id)
        members = run.store.get_json("init.json")["members"]
        stages._write_offspring(run, 1, 0, 1, members)
    elif step.startswith("statistics"):
        run = stages.Run(conf, run_id)
        stages._ensure_statistics(run, 0, run.store.get_json("init.json")["members"])
    elif step.startswith("merge"):
        run = stages.Run(conf, run_id)
        models = stages._scored_models(run, run.store.get_json("init.json")["members"], 0)
        stages._dev_counts(run, models)
    else:
        stages.init_population(conf, run_id)
    queue.put({"step": step, "baseline_gb": baseline / GB, "peak_gb": (_status("VmHWM") - baseline) / GB, "seconds": round(time.perf_counter() - started, 1)})


def measure(step: str, conf: dict[str, Any], run_id: str) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_step, args=(step, conf, run_id, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"step {step} failed (exit code {process.exitcode})")
    return queue.get()


def peaks(label: str, hidden: int, layers: int, members: int, workdir: Path, log, steps: list[str] | None = None) -> list[dict[str, Any]]:
    """Every step's peak on one synthetic population; `steps` (substrings) narrows the steps after `download`
    and `init` (the statistics a chosen merge needs are kept)."""
    from tasks.merge.registry import METHODS
    from tasks.store import run_key

    folder = workdir / f"{label}-{members}"
    population = build_population(folder / "checkpoints", hidden, layers, members)
    log(f"{label}: {members} x {population['parameters'] / 1e6:.0f} M parameters, {population['population_gb']:.2f} GB; largest tensor {population['largest_tensor_gb'] * 1e3:.0f} MB")
    rows = []
    context = {"size": label, "members": members, **{k: population[k] for k in ("parameters", "model_gb", "largest_tensor_gb", "population_gb")}}
    run_id = f"memory-{label}-{members}"
    base_conf = run_config(population, folder)
    wanted = lambda step: steps is None or any(pattern in step for pattern in steps)
    for step in ["download", "init", "offspring"]:
        if step == "offspring" and not wanted(step):
            continue
        rows.append({**context, **measure(step, base_conf, run_id)})
        log(f"  {rows[-1]['step']}: +{rows[-1]['peak_gb']:.2f} GB ({rows[-1]['seconds']} s)")
    for name, method in METHODS.items():
        conf = {**base_conf, "merger": name}
        if not wanted(f"merge {name}"):
            continue
        if method.statistic:
            # One run serves every method here, and statistics are stored under one key whatever their kind.
            shutil.rmtree(Path(base_conf["store"]) / run_key(run_id) / "stats", ignore_errors=True)
            rows.append({**context, **measure(f"statistics {method.statistic}", conf, run_id)})
            log(f"  {rows[-1]['step']}: +{rows[-1]['peak_gb']:.2f} GB ({rows[-1]['seconds']} s)")
        rows.append({**context, **measure(f"merge {name}", conf, run_id)})
        log(f"  {rows[-1]['step']}: +{rows[-1]['peak_gb']:.2f} GB ({rows[-1]['seconds']} s)")
    shutil.rmtree(folder)
    return rows


def target_of(row: dict[str, Any]) -> float | None:
    if row["step"] == "offspring":
        return 4 * row["largest_tensor_gb"] + 1
    if row["step"].startswith("merge"):
        return row["model_gb"] + 1
    return None


# -- the end-to-end run in a memory cgroup -------------------------------------------------------------


def memory_cgroup(limit_bytes: int) -> Path | None:
    """A fresh memory cgroup (v1 controller, or v2 where it is mounted with memory) limited to `limit_bytes`,
    or None where this process may not make one."""
    candidates = [(Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"), (Path("/sys/fs/cgroup"), "memory.max")]
    for root, limit_file in candidates:
        if not (root / limit_file).exists() and not (root / "cgroup.subtree_control").exists():
            continue
        group = root / f"evolver-bench-{os.getpid()}"
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit_bytes))
            swap = group / ("memory.memsw.limit_in_bytes" if limit_file.endswith("in_bytes") else "memory.swap.max")
            if swap.exists():
                swap.write_text(str(limit_bytes) if limit_file.endswith("in_bytes") else "0")
            return group
        except OSError:
            if group.is_dir():
                group.rmdir()
    return None


def ram_bytes() -> int:
    return _proc_bytes("/proc/meminfo", "MemTotal")


def model_bytes(hidden: int, layers: int) -> int:
    """fp32 bytes of build_population's model, from a meta-device instance (no memory)."""
    import torch
    from transformers import BertForSequenceClassification

    with torch.device("meta"):
        return sum(t.numel() * 4 for t in BertForSequenceClassification(bert_config(hidden, layers)).state_dict().values() if t.is_floating_point())


def larger_than_ram_sizes(factor: float = RAM_FACTOR) -> tuple[str, int, int, int]:
    """(label, hidden, layers, members) of a population of RAM_MEMBERS that passes `factor` x this machine's RAM."""
    one, two = model_bytes(RAM_HIDDEN, 1), model_bytes(RAM_HIDDEN, 2)
    per_layer, rest = two - one, one - (two - one)
    layers = math.ceil((factor * ram_bytes() / RAM_MEMBERS - rest) / per_layer)
    return ("larger-than-ram", RAM_HIDDEN, layers, RAM_MEMBERS)


def end_to_end(workdir: Path, limit_gb: float | None, log, sizes=E2E, larger_than_ram: bool = False) -> dict[str, Any]:
    """`evolver run` of a synthetic population: in a memory cgroup of `limit_gb`, or (larger_than_ram) with
    members linked into the store and no limit but the machine's."""
    label, hidden, layers, members = sizes
    folder = workdir / label
    member_files = "link" if larger_than_ram else "copy"
    if larger_than_ram:
        # The checkpoints and one generation of offspring; the fused model in the store and in MLflow, one more
        # model and 2 GB of headroom. Linked members and template add nothing.
        need = (2 * members + 3) * model_bytes(hidden, layers) + 2 * GB
        free = shutil.disk_usage(workdir).free
        if free < need:
            raise SystemExit(f"bench.memory --larger-than-ram: needs {need / GB:.1f} GB of free disk under {workdir}, {free / GB:.1f} GB are free")
    population = build_population(folder / "checkpoints", hidden, layers, members, with_base=not larger_than_ram)
    if larger_than_ram:
        log(f"larger than RAM: {population['population_gb']:.2f} GB of members against {ram_bytes() / GB:.2f} GB of RAM")
    conf_path = folder / "config.json"
    conf_path.write_text(json.dumps(run_config(population, folder, member_files=member_files)))
    limit = int(limit_gb * GB) if limit_gb else None
    group = memory_cgroup(limit) if limit else None
    log(
        f"end to end: {members} x {population['model_gb']:.2f} GB = {population['population_gb']:.2f} GB population, "
        + (f"in a {limit / GB:.2f} GB memory cgroup ({group})" if group else "unconfined" + (" (no memory cgroup can be made here)" if limit else ""))
    )
    procs = group / "cgroup.procs" if group else None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    started = time.perf_counter()
    with open(folder / "run.log", "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", "run", str(conf_path), "--run-id", "memory-e2e", "--output", str(folder / "out")],
            env=env,
            preexec_fn=(lambda: procs.write_text(str(os.getpid()))) if procs else None,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not every child's so far
    wall = time.perf_counter() - started
    returncode = os.waitstatus_to_exitcode(status)
    result = {
        **{k: population[k] for k in ("parameters", "model_gb", "largest_tensor_gb", "population_gb")},
        "limit_gb": limit / GB if group else None,
        "confined": group is not None,
        "ram_gb": ram_bytes() / GB,
        "member_files": member_files,
        "returncode": returncode,
        "wall_s": round(wall, 1),
        "peak_rss_gb": usage.ru_maxrss * 1024 / GB,
    }
    if group:
        for name in ("memory.failcnt", "memory.max_usage_in_bytes", "memory.peak", "memory.events"):
            if (group / name).exists():
                result[name] = (group / name).read_text().strip()
        group.rmdir()
    if returncode != 0:
        log((folder / "run.log").read_text()[-4000:])
    else:
        summary = json.loads((folder / "out" / "summary.json").read_text())
        result["fused_model_sha256"] = summary["fused_model_sha256"]
    shutil.rmtree(folder)
    return result


# -- report ----------------------------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], e2e: dict[str, Any] | None) -> tuple[str, bool]:
    lines = [
        "| size | members | model GB | largest tensor MB | step | baseline GB | peak above baseline GB | target GB | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ] if rows else []
    ok = True
    for row in rows:
        target = target_of(row)
        ok &= target is None or row["peak_gb"] <= target
        lines.append(
            f"| {row['size']} | {row['members']} | {row['model_gb']:.2f} | {row['largest_tensor_gb'] * 1e3:.0f} | {row['step']} | {row['baseline_gb']:.2f} | "
            f"{row['peak_gb']:.2f} | {'' if target is None else f'{target:.2f}' + (' met' if row['peak_gb'] <= target else ' **missed**')} | {row['seconds']} |"
        )
    if e2e is not None:
        lines += [""] if rows else []
        lines.append(
            f"End to end: `evolver run` of {e2e['population_gb']:.2f} GB of members ({e2e['parameters'] / 1e6:.0f} M parameters each), "
            + (f"in a {e2e['limit_gb']:.2f} GB memory cgroup" if e2e["confined"] else f"unconfined, on {e2e['ram_gb']:.2f} GB of RAM")
            + (", members linked into the store" if e2e.get("member_files") == "link" else "")
            + f": exit code {e2e['returncode']}, {e2e['wall_s']} s, peak RSS of its process {e2e['peak_rss_gb']:.2f} GB"
            + (f", cgroup failcnt {e2e.get('memory.failcnt')}" if "memory.failcnt" in e2e else "")
            + "."
        )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models; the end-to-end run unconfined")
    parser.add_argument("--workdir", type=Path, default=BENCH / "work" / "memory")
    parser.add_argument("--limit-gb", type=float, default=E2E_LIMIT_GB, help="memory cgroup limit of the end-to-end run (0: unconfined)")
    parser.add_argument("--skip-peaks", action="store_true", help="only the end-to-end run")
    parser.add_argument("--skip-e2e", action="store_true", help="only the peaks")
    parser.add_argument(
        "--larger-than-ram", action="store_true", help=f"the end-to-end population at {RAM_FACTOR} x this machine's RAM, unconfined, members linked into the store"
    )
    parser.add_argument("--sizes", nargs="+", default=None, metavar="LABEL:MEMBERS", help="only these populations of the table, e.g. large:5")
    parser.add_argument("--steps", nargs="+", default=None, metavar="PATTERN", help="only the steps whose name contains a PATTERN, e.g. ties")
    parser.add_argument("--output", type=Path, default=None, help="also write the table and figures (JSON) here, as <output>.md/.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    log = lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"free disk under {workdir}: {shutil.disk_usage(workdir).free / GB:.1f} GB")
    populations = [p for p in (SMOKE_SIZES if args.smoke else SIZES) if args.sizes is None or f"{p[0]}:{p[3]}" in args.sizes]
    rows = [] if args.skip_peaks else [row for sizes in populations for row in peaks(*sizes, workdir, log, args.steps)]
    e2e = None
    if not args.skip_e2e:
        if args.larger_than_ram:
            e2e = end_to_end(workdir, None, log, sizes=larger_than_ram_sizes(), larger_than_ram=True)
        else:
            e2e = end_to_end(workdir, None if args.smoke or not args.limit_gb else args.limit_gb, log, sizes=("e2e", 64, 2, 3) if args.smoke else E2E)
    table, ok = report(rows, e2e)
    print(table)
    if args.output:
        args.output.with_suffix(".md").write_text(table + "\n")
        args.output.with_suffix(".json").write_text(json.dumps({"peaks": rows, "end_to_end": e2e}, indent=1))
    offspring = max((r["peak_gb"] for r in rows if r["step"] == "offspring"), default=float("nan"))
    merge = max((r["peak_gb"] - r["model_gb"] for r in rows if r["step"].startswith("merge")), default=float("nan"))
    status = "skipped" if e2e is None else ("ok" if e2e["returncode"] == 0 else "failed")
    print(
        f"memory_ok={str(ok and status != 'failed').lower()} offspring_peak_gb={offspring:.2f} merge_above_model_gb={merge:.2f} "
        f"population_gb={e2e['population_gb'] if e2e else float('nan'):.2f} limit_gb={(e2e or {}).get('limit_gb') or 0:.2f} e2e={status}"
    )
    return 0 if ok and status != "failed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
