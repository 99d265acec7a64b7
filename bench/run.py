"""The paper's comparison, reproduced offline: every row of ALGORITHM.md's result table, over several seeds.

    python -m bench.run [--quick] [--name NAME] [--seeds 1 2 3] [--workdir DIR] [--results DIR]
    python -m bench.run --setting ablation [--quick] [--methods average ties ...]   # see bench/ablation.py
    python -m bench.run --setting cross-task [--quick] [--jobs 2]                    # see bench/cross_task.py
    python -m bench.run --setting families [--quick] [--jobs 2]                      # see bench/families.py

1. Population: all-MiniLM-L6-v2 fine-tuned once per in-domain Twitter domain (tasks.finetune, cached by
   content in <workdir>/models), plus the multi-task reference fine-tuned on the union of their training data.
2. Splits: tasks.corpora.write_splits with a fixed seed (SPLIT_SEED); fitness = the in-domain dev splits
   concatenated; in-domain score = mean macro-F1 over the in-domain test splits; out-of-domain score = mean
   macro-F1 over claritin tweets and drug reviews.
3. Rows: every pipeline row is one `tasks.cli.run_pipeline` call (plain merges are `generations: 0`; the
   individual members come from the plain-mode `generations: 0` run with `baselines: true`); the logit ensemble
   and the multi-task model are scored with tasks.taskpool's encode / confusion / metrics.
4. Seeds: the run seed (Evolver's draws, DARE's masks, the dev batches Fisher / RegMean statistics use).
   Splits and fine-tuning are fixed (see bench/README.md), so rows that ignore the run seed have std 0.

Results: <results>/<name>.json (every number per seed, machine, command), <name>.md, <name>_curves.png,
<name>_bars.png. See bench/README.md for sizes, timings and how to run full size on a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tasks.config import MASK_STREAMS

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SPLIT_SEED = 0
SEQUENTIAL = "Evolver + average (sequential)"
INDIVIDUAL_MEAN, INDIVIDUAL_BEST = "individual (mean)", "individual (best on dev)"
EVOLVER_PLAIN = "Evolver (plain)"
ENSEMBLE, MULTITASK = "logit ensemble", "multi-task"

# Sizes (see bench/README.md for the measurements behind them). Full: 5 members; dev 80 per domain keeps one
# fitness evaluation near 2 s on 2 CPU cores, and G = 5 keeps the 8 Evolver runs per seed affordable.
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {
        "in_domain": ["airline", "deflategate", "apple", "coachella", "self_driving"],
        "out_of_domain": ["claritin", "drugreview"],
        "train": 800,
        "dev": 60,
        "test": 150,
        "ood_test": 200,
        "epochs": 3,
        "generations": 5,
        "seeds": [1, 2, 3],
        "mergers": None,  # every registered merging method
        # The guard variant the benchmark's table carries (chosen before its results: see the README); the
        # others are probes, run into a finished benchmark with --rows, which picks from every variant.
        "guards": ["guarded, F=0.1"],
    },
    "quick": {
        "in_domain": ["airline", "deflategate", "coachella"],
        "out_of_domain": ["claritin", "drugreview"],
        "train": 48,
        "dev": 16,
        "test": 24,
        "ood_test": 24,
        "epochs": 1,
        "generations": 2,
        "seeds": [1, 2],
        # One method without and one with task vectors and a seeded mask: every kind of row, in under 3 minutes.
        "mergers": ["average", "dare"],
        "guards": ["guarded"],
    },
}


def data_sizes(sizes: dict[str, Any]) -> dict[str, Any]:
    """The sizes that shape the data and the members, which finished results must share with a run added to
    them; seeds, mergers and guards only pick which rows (or runs) are made."""
    return {k: v for k, v in sizes.items() if k not in ("seeds", "mergers", "guards")}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- population -----------------------------------------------------------------------------------------


def member_folder(workdir: Path, name: str, index: int, seed: int) -> Path:
    """Where a fine-tuned model lives: models/<name> for the benchmark's seed (its index), else a seed suffix,
    so a population fine-tuned with other seeds reuses every checkpoint the two have in common."""
    stem = name.replace(" ", "_")
    return workdir / "models" / (stem if seed == index else f"{stem}-seed{seed}")


def build_population(workdir: Path, sizes: dict[str, Any], log=_log, *, member_seed: int | None = None) -> dict[str, Any]:
    """Seeded splits and the fine-tuned members (one per in-domain domain) plus the multi-task model.

    member_seed None: member k is fine-tuned with seed k (the benchmark: independently initialised heads and
    batch orders). An integer: every member with that one seed (identical heads at initialisation, as a shared
    training script with the Trainer's default seed gives)."""
    from tasks.corpora import LABELS, minilm_folder, write_splits
    from tasks.demo import LEARNING_RATE, MAX_LENGTH
    from tasks.finetune import RECORD, finetune

    started = time.perf_counter()
    data = workdir / "data"
    splits = write_splits(
        data,
        in_domain=sizes["in_domain"],
        out_of_domain=sizes["out_of_domain"],
        train=sizes["train"],
        dev=sizes["dev"],
        test=sizes["test"],
        ood_test=sizes["ood_test"],
        seed=SPLIT_SEED,
        extra_dev=sizes.get("extra_dev", 0),
    )
    recipe = {"epochs": sizes["epochs"], "lr": LEARNING_RATE, "max_length": MAX_LENGTH, "batch_size": 32}
    jobs = [(domain, data / domain / "train.csv", k, k if member_seed is None else member_seed) for k, domain in enumerate(sizes["in_domain"])]
    jobs.append((MULTITASK, data / "multitask" / "train.csv", len(jobs), len(jobs)))
    models = {}
    for name, train_csv, index, seed in jobs:
        folder = member_folder(workdir, name, index, seed)
        # Distinct seeds: distinct heads and batch orders, as for independently fine-tuned members.
        finetune(train_csv, folder, base_model=minilm_folder(), labels=LABELS, seed=seed, log=log, **recipe)
        record = json.loads((folder / RECORD).read_text())
        models[name] = {"folder": str(folder), "train_rows": record["result"]["rows"], "finetune_s": record["result"]["seconds"], "device": record["result"]["device"]}
        log(f"{name}: ready ({record['result']['seconds']:.0f}s of fine-tuning when it was trained)")
    return {
        "splits": splits,
        "recipe": recipe,
        "members": {d: models[d] for d in sizes["in_domain"]},
        "multitask": models[MULTITASK],
        "data": str(data),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def base_config(population: dict[str, Any], workdir: Path, sizes: dict[str, Any], name: str, mask_stream: str = "counter") -> dict[str, Any]:
    """The run configuration every pipeline row starts from."""
    from tasks.demo import MAX_LENGTH

    data = Path(population["data"])
    in_domain, ood = sizes["in_domain"], sizes["out_of_domain"]
    return {
        "models": [m["folder"] for m in population["members"].values()],
        "data": {
            "dev": [str(data / d / "dev.csv") for d in in_domain],
            "heldout": {d: str(data / d / "test.csv") for d in [*in_domain, *ood]},
            "out_of_domain": list(ood),
            "max_length": MAX_LENGTH,
            "batch_size": 64,
        },
        "mode": "merge",
        "merger": "average",
        "schedule": "generational",
        "generations": sizes["generations"],
        "F": 0.5,
        "CR": 0.5,
        "mask_stream": mask_stream,
        **run_settings(workdir, name),
    }


def run_settings(workdir: Path, name: str) -> dict[str, Any]:
    """What every bench run shares: one shard, a bench-local store and MLflow database, nothing registered."""
    return {
        "shards": 1,
        "baselines": False,
        "store": str(workdir / "store"),
        "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "experiment": f"bench-{name}",
        "registered_model": None,
        "device": "auto",
    }


# -- pipeline rows --------------------------------------------------------------------------------------


# Guarded Evolver, one row per variant and merging method (see the README's benchmark commentary). `guarded`:
# half of every dev domain held back as validation, an offspring may not lower the validation score, and the
# output is the accepted state with the best one (early stopping on the lineage). `guarded, F=0.1` adds the
# reference code's own F for its emotion experiments: smaller steps. `guarded, held-out domain` holds back a
# whole dev domain instead (the last one listed, fixed before its results): validation then measures transfer
# to a domain fitness never saw, the nearest thing on dev data to out-of-domain traffic.
HELD_OUT_DOMAIN = "validation_domain"  # a guard key of the bench, not of the pipeline: resolved by with_overrides
GUARDS: dict[str, dict[str, Any]] = {
    "guarded": {"data": {"validation": 0.5}, "validation_tolerance": 0.0},
    "guarded, F=0.1": {"data": {"validation": 0.5}, "validation_tolerance": 0.0, "F": 0.1},
    "guarded, held-out domain": {HELD_OUT_DOMAIN: "last", "validation_tolerance": 0.0},
}


def guard_of(row: str) -> str | None:
    """The guard variant of a row name such as `Evolver + ties (guarded)`, or None."""
    label = row.rpartition(" (")[2].removesuffix(")") if row.endswith(")") else None
    return label if label in GUARDS else None


def pipeline_runs(generations: int, mergers: list[str] | None = None, guards: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(run name, config overrides) of every pipeline run of one seed, in the order they run."""
    from tasks.merge.registry import MERGER_NAMES

    mergers = list(mergers or MERGER_NAMES)
    runs = [("individuals", {"mode": "plain", "generations": 0, "baselines": True})]
    runs += [(m, {"merger": m, "generations": 0}) for m in mergers]
    runs.append((EVOLVER_PLAIN, {"mode": "plain"}))
    runs += [(f"Evolver + {m}", {"merger": m}) for m in mergers]
    runs.append((SEQUENTIAL, {"merger": "average", "schedule": "sequential"}))
    runs += [(f"Evolver + {m} ({label})", {"merger": m, **GUARDS[label]}) for label in guards or GUARDS for m in mergers]
    return [(name, {"generations": generations, **overrides}) for name, overrides in runs]


def mask_stream_of(result: dict[str, Any]) -> str:
    """The crossover stream a results file was made with; files from before 2026-11-27 do not say: theirs was torch-mt19937."""
    return result.get("hyperparameters", result).get("mask_stream", "torch-mt19937")


def with_overrides(conf: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """conf with overrides applied, nested mappings (the `data` block) merged key by key; the bench's
    `validation_domain: last` moves the last dev source from fitness to validation."""
    if HELD_OUT_DOMAIN in overrides:
        overrides = dict(overrides)
        if overrides.pop(HELD_OUT_DOMAIN) != "last":
            raise ValueError(f"{HELD_OUT_DOMAIN}: only `last` (the last dev source) is defined")
        *fitness, held_out = conf["data"]["dev"]
        conf = {**conf, "data": {**conf["data"], "dev": fitness, "validation": [held_out]}}
    merged = dict(conf)
    for key, value in overrides.items():
        merged[key] = with_overrides(conf[key], value) if isinstance(value, dict) and isinstance(conf.get(key), dict) else value
    return merged


def _scores(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one model: dev, held-out sets and their in-domain / out-of-domain means."""
    return {
        # A guarded run's `dev` covers only its fitness rows; `dev_all` is every dev row, as in the other rows.
        "dev_fitness": report.get("dev_all", report["dev"])["macro_f1"],
        "in_domain": report["heldout_mean"]["in_domain"]["macro_f1"],
        "out_of_domain": report["heldout_mean"]["out_of_domain"]["macro_f1"],
        "dev": report["dev"],
        "heldout": report["heldout"],
        "heldout_mean": report["heldout_mean"],
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def rows_of_run(name: str, summary: dict[str, Any], wall_s: float) -> dict[str, dict[str, Any]]:
    """The result-table rows one pipeline run produces (two for the individuals' run, else one)."""
    common = {"wall_s": round(wall_s, 1), "run_key": summary["run_key"], "mlflow_run_id": summary["mlflow_run_id"]}
    if name == "individuals":
        # baselines = each member by folder name, plus the plain merge under the merger's name: members only.
        members = {member: _scores(report) for member, report in summary["baselines"].items() if member != summary["config"]["merger"]}
        mean = {key: _mean(m[key] for m in members.values()) for key in ("dev_fitness", "in_domain", "out_of_domain")}
        # The pipeline's own choice in plain mode: the best dev fitness, ties to the first member.
        best = max(members, key=lambda m: members[m]["dev_fitness"])
        shared = {**common, "note": "both individual rows come from one plain-mode generations: 0 run"}
        return {
            INDIVIDUAL_MEAN: {**mean, "members": members, **shared},
            INDIVIDUAL_BEST: {**_scores(summary["final"]), "member": best, "fused_model_sha256": summary["fused_model_sha256"], **shared},
        }
    row = {**_scores(summary["final"]), "fitness": summary["final"]["fitness"], "fused_model_sha256": summary["fused_model_sha256"], **common}
    if summary["config"]["generations"] > 0:
        row["curve"] = [g["best_fitness"] for g in summary["generations"]]
        row["evaluations"] = [g["evaluations"] for g in summary["generations"]]
        row["accepted"] = [g["accepted"] for g in summary["generations"]]
        if summary["config"]["schedule"] == "sequential":
            row["curve_per_evaluation"] = per_evaluation_curve(summary)
    return {name: row}


def per_evaluation_curve(summary: dict[str, Any]) -> list[float]:
    """Sequential schedule: best merged dev fitness after each evaluation (index 0 = the initial merge)."""
    best = [summary["generations"][0]["best_fitness"]]
    for entry in sorted(summary["lineage"], key=lambda e: (e["generation"], e["round"])):
        best.append(max(best[-1], entry["fitness"]) if entry["accepted"] else best[-1])
    return best


def run_one(conf: dict[str, Any], run_id: str, *, keep_store: bool, summaries: Path, log=_log) -> tuple[dict[str, Any], float]:
    """One pipeline run through the CLI driver; its summary is kept, its (large) store folder is not."""
    from tasks.cli import run_pipeline
    from tasks.config import EvolverConfig
    from tasks.store import run_key

    cfg = EvolverConfig.from_dict(conf)
    started = time.perf_counter()
    summary = run_pipeline(cfg, run_id, log=lambda line: log(f"  {run_id} {line}"))
    wall = time.perf_counter() - started
    summaries.mkdir(parents=True, exist_ok=True)
    (summaries / f"{run_key(run_id)}.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    if not keep_store:  # offspring are 90 MB each: a full benchmark would otherwise leave tens of GB
        shutil.rmtree(Path(conf["store"]) / run_key(run_id), ignore_errors=True)
    return summary, wall


# -- references: logit ensemble and multi-task model ------------------------------------------------------


class LogitEnsemble:
    """Averages its members' logits; called like a Hugging Face classifier (`.logits`), as taskpool expects."""

    def __init__(self, models):
        self.models = models

    def parameters(self):
        return self.models[0].parameters()

    def __call__(self, **inputs):
        import torch

        return SimpleNamespace(logits=torch.stack([m(**inputs).logits for m in self.models]).mean(0))


def evaluation_sets(conf: dict[str, Any]):
    """The dev set and every held-out set of the run config, tokenised once with tasks.taskpool.encode."""
    from transformers import AutoTokenizer

    from tasks import modelpool, taskpool

    data = conf["data"]
    label2id, num_labels = modelpool.labels(Path(conf["models"][0]))
    tokenizer = AutoTokenizer.from_pretrained(conf["models"][0])
    sources = {"dev": data["dev"], **{f"heldout/{n}": s for n, s in data["heldout"].items()}}
    return {
        name: taskpool.encode(source, tokenizer=tokenizer, text_column="text", label_column="label", label2id=label2id, num_labels=num_labels, max_length=data["max_length"])
        for name, source in sources.items()
    }, num_labels


def score_model(model, sets, num_labels: int, out_of_domain: list[str], batch_size: int) -> dict[str, Any]:
    """The report the pipeline's finalize writes (dev, held-out, in/out-of-domain means), for any model."""
    from tasks import taskpool

    def one(data):
        return taskpool.metrics(taskpool.confusion(model, data, range(len(data["labels"])), batch_size=batch_size, num_labels=num_labels))

    heldout = {name.removeprefix("heldout/"): one(data) for name, data in sets.items() if name != "dev"}
    groups = {"in_domain": [n for n in heldout if n not in out_of_domain], "out_of_domain": [n for n in heldout if n in out_of_domain]}
    means = {g: {m: _mean(heldout[n][m] for n in names) for m in ("accuracy", "macro_f1", "mcc")} for g, names in groups.items()}
    return {"dev": one(sets["dev"]), "heldout": heldout, "heldout_mean": means}


def references(conf: dict[str, Any], population: dict[str, Any], log=_log) -> dict[str, dict[str, Any]]:
    """The logit ensemble of the members and the multi-task model, scored on the pipeline's data."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tasks import modelpool

    device = modelpool.pick_device(conf["device"])
    sets, num_labels = evaluation_sets(conf)
    ood, batch_size = conf["data"]["out_of_domain"], conf["data"]["batch_size"]

    def load(folder):
        return AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).to(device).eval()

    rows = {}
    started = time.perf_counter()
    ensemble = LogitEnsemble([load(folder) for folder in conf["models"]])
    rows[ENSEMBLE] = {**_scores(score_model(ensemble, sets, num_labels, ood, batch_size)), "wall_s": round(time.perf_counter() - started, 1)}
    log(f"{ENSEMBLE}: in-domain {rows[ENSEMBLE]['in_domain']:.4f}, out-of-domain {rows[ENSEMBLE]['out_of_domain']:.4f}")
    started = time.perf_counter()
    scored = _scores(score_model(load(population["multitask"]["folder"]), sets, num_labels, ood, batch_size))
    # Its cost includes its fine-tuning (recorded when it was trained; 0 here when it came from the cache).
    rows[MULTITASK] = {**scored, "wall_s": round(time.perf_counter() - started + population["multitask"]["finetune_s"], 1)}
    log(f"{MULTITASK}: in-domain {rows[MULTITASK]['in_domain']:.4f}, out-of-domain {rows[MULTITASK]['out_of_domain']:.4f}")
    return rows


# -- the benchmark ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        # Tracked changes only: the results and work folders this run writes are untracked by design.
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # on 2 cores, one thread per worker gives the same logits as two, bit for bit


def execute(calls: list[tuple[Any, Any, tuple]], workers: int):
    """Run (key, function, args) calls and yield (key, result) as each finishes: in this process when workers is
    1, else in that many spawned worker processes sharing the cores (cores // workers torch threads each)."""
    if workers <= 1:
        for key, function, call_args in calls:
            yield key, function(*call_args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(function, *call_args): key for key, function, call_args in calls}
        for future in as_completed(futures):
            yield futures[future], future.result()


def run_in_worker(conf: dict[str, Any], run_id: str, workdir: str, keep_store: bool) -> tuple[dict[str, Any], float]:
    """run_one in a worker process, with an MLflow database of its own: workers never share a SQLite file."""
    conf = {**conf, "tracking_uri": f"sqlite:///{Path(workdir) / f'mlflow-worker-{os.getpid()}.db'}"}
    return run_one(conf, run_id, keep_store=keep_store, summaries=Path(workdir) / "summaries", log=lambda line: None)


def run_benchmark(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from bench import report

    variant = "quick" if args.quick else "full"
    sizes = {**VARIANTS[variant], **dict(args.size), "seeds": list(args.seeds or VARIANTS[variant]["seeds"])}
    name = args.name or variant
    workdir = (args.workdir or BENCH / "work" / variant).resolve()
    results_dir = args.results.resolve()
    started, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    log = _log
    log(f"bench {name}: {variant} sizes, seeds {sizes['seeds']}, workdir {workdir}")

    existing = results_dir / f"{name}.json"
    if args.skip and not args.rows:
        raise SystemExit("--skip narrows --rows; give --rows too")
    if args.rows and not existing.is_file():
        raise SystemExit(f"--rows adds rows to {existing}, which does not exist: run the whole benchmark first")
    population = build_population(workdir, sizes, log)
    conf0 = base_config(population, workdir, sizes, name, args.mask_stream)
    if args.rows:
        result = json.loads(existing.read_text())
        stored = data_sizes(result["sizes"])
        if stored != data_sizes(sizes):
            raise SystemExit(f"--rows: {existing} was made with other sizes ({stored}); use the same --size options")
        if mask_stream_of(result) != args.mask_stream:
            raise SystemExit(f"--rows: {existing} was made with --mask-stream {mask_stream_of(result)}; add rows with the same stream")
        addition = {
            "command": shlex.join(["python", "-m", "bench.run", *argv]),
            "started": started_at.isoformat(timespec="seconds"),
            "machine": {**machine(), "loadavg_at_start": os.getloadavg()},
            "workers": args.jobs,
            "rows": [],
        }
        result.setdefault("additions", []).append(addition)
        result["complete"] = False
    else:
        (results_dir / "splits").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(population["data"]) / "splits.json", results_dir / "splits" / f"{name}.json")
        result = {
            "name": name,
            "variant": variant,
            "command": shlex.join(["python", "-m", "bench.run", *argv]),
            "started": started_at.isoformat(timespec="seconds"),
            "machine": {**machine(), "loadavg_at_start": os.getloadavg()},
            "sizes": sizes,
            "split_seed": SPLIT_SEED,
            "varied_per_seed": "the run seed only (Evolver's references, crossover masks and visit order; DARE's drop masks; the dev "
            "batches Fisher / RegMean statistics are computed on). Splits (seed 0) and fine-tuning (member seed k) are fixed.",
            "hyperparameters": {"F": conf0["F"], "CR": conf0["CR"], "mask_stream": args.mask_stream, "generations": sizes["generations"], "merge_params": "tasks.merge.params defaults", "finetune": population["recipe"]},
            "config_template": conf0,
            "population": population,
            "rows": {},
            "complete": False,
        }
    result["guards"] = GUARDS
    run_stamp = started_at.strftime("%Y%m%dT%H%M%S")

    def publish(plots: bool = False) -> None:
        if not args.rows:
            result["wall_s"] = round(time.perf_counter() - started, 1)
            report.write(result, results_dir, plots=plots)
            return
        # An addition keeps the benchmark's own wall time and records its own. It re-reads the file and writes
        # back only its own rows, so several additions can run at once.
        latest = json.loads(existing.read_text())
        latest["rows"].update({row: result["rows"][row] for row in addition["rows"] if row in result["rows"]})
        mine = (addition["command"], addition["started"])
        latest["additions"] = [a for a in latest.get("additions", []) if (a["command"], a["started"]) != mine] + [addition]
        latest["guards"] = GUARDS
        with_seeds(latest, sizes["seeds"])
        latest["complete"] = all("finished" in a for a in latest["additions"])
        latest["schedules"] = report.schedule_comparison(latest)
        report.write(latest, results_dir, plots=plots)

    def record(row: str, seeds: list[int], values: dict[str, Any], seeded: bool) -> None:
        entry = result["rows"].setdefault(row, {"seeded": seeded, "computed_once": not seeded, "per_seed": {}})
        entry["per_seed"].update({str(s): values for s in seeds})

    # Rows the run seed cannot change (fixed fine-tuning, no random draw) are computed once, with the first
    # seed, and every seed gets the same numbers: their std is 0 by construction, not by measurement.
    if not args.rows:
        for row, values in references(conf0, population, log).items():
            record(row, sizes["seeds"], values, seeded=False)
    runs = pipeline_runs(sizes["generations"], sizes["mergers"], None if args.rows else sizes.get("guards"))
    if args.rows:
        runs = [run for run in runs if any(p in run[0] for p in args.rows) and not any(p in run[0] for p in args.skip or [])]
        for run_name, _ in runs:
            # The seeds run now are replaced; a row's other seeds stay (--seeds 3 completes a row run on 1 and 2).
            for entry in [result["rows"].get(run_name)] if run_name in result["rows"] else []:
                entry["per_seed"] = {s: v for s, v in entry["per_seed"].items() if int(s) not in sizes["seeds"]}
            addition["rows"].append(run_name)
    schedule = [(run, [s]) for s in sizes["seeds"] for run in runs if seeded(run[0])]
    schedule = [(run, sizes["seeds"]) for run in runs if not seeded(run[0])] + schedule
    calls = []
    for (run_name, overrides), seeds in schedule:
        conf = {**with_overrides(conf0, overrides), "seed": seeds[0]}
        if "merger" in overrides and _needs_base(conf["merger"]):
            conf["base_model"] = _minilm()
        run_id = f"bench-{name}-{run_stamp}-s{seeds[0]}-{run_name}"
        if args.jobs > 1:
            calls.append(((run_name, seeds), run_in_worker, (conf, run_id, str(workdir), args.keep_stores)))
        else:
            log_run = lambda line, run_id=run_id: log(f"  {run_id} {line}")
            calls.append(((run_name, seeds), lambda c, r, log_run=log_run: run_one(c, r, keep_store=args.keep_stores, summaries=workdir / "summaries", log=log_run), (conf, run_id)))
    log(f"{len(calls)} pipeline runs on {max(1, args.jobs)} worker(s)")
    for done, ((run_name, seeds), (summary, wall)) in enumerate(execute(calls, args.jobs), start=1):
        log(f"[{done}/{len(calls)}] seed {', '.join(map(str, seeds))}: {run_name}")
        for row, values in rows_of_run(run_name, summary, wall).items():
            record(row, seeds, values, seeded(run_name))
            log(f"  {row}: dev {values['dev_fitness']:.4f}, in-domain {values['in_domain']:.4f}, out-of-domain {values['out_of_domain']:.4f} ({wall:.0f}s)")
        publish(plots=done == len(calls) or (args.jobs <= 1 and len(seeds) == 1 and run_name == runs[-1][0]))
    result["schedules"] = report.schedule_comparison(result)
    result["complete"] = True
    finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if args.rows:
        addition.update(finished=finished, wall_s=round(time.perf_counter() - started, 1), loadavg_at_end=os.getloadavg())
    else:
        result["finished"] = finished
        result["machine"]["loadavg_at_end"] = os.getloadavg()
    publish(plots=True)
    log(f"bench {name}: done in {time.perf_counter() - started:.0f}s; results in {results_dir}")
    return result


def with_seeds(result: dict[str, Any], seeds: list[int]) -> None:
    """Widen a benchmark to more seeds, for an addition that runs new ones (`--rows ... --seeds 2 3`).

    Its rows that cannot depend on the run seed were computed once, with the first seed: the new seeds repeat
    those numbers, exactly as a benchmark run on all seeds at once does. Seeded rows get the new seeds only
    when they are run; until then the report marks them as made on fewer seeds."""
    new = [s for s in seeds if s not in result["sizes"]["seeds"]]
    if not new:
        return
    for entry in result["rows"].values():
        if entry.get("computed_once"):
            first = entry["per_seed"][min(entry["per_seed"], key=int)]
            entry["per_seed"].update({str(s): first for s in new})
    result["sizes"]["seeds"] = sorted(result["sizes"]["seeds"] + new)


def _minilm() -> str:
    from tasks.corpora import minilm_folder

    return str(minilm_folder())


def _needs_base(merger: str) -> bool:
    from tasks.merge.registry import METHODS

    return METHODS[merger].needs_base


# Merging methods that draw nothing at random. Any other (DARE's masks; Fisher and RegMean, whose statistics
# use a seeded choice and grouping of dev batches; a method added later) counts as seed-dependent.
UNSEEDED_MERGERS = ("average", "task_arithmetic", "ties")


def seeded(run_name: str) -> bool:
    """Whether the run seed can change the rows of a pipeline run (Evolver always; a plain merge if it draws)."""
    return not (run_name == "individuals" or run_name in UNSEEDED_MERGERS)


def _size(item: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = item.partition("=")
    if not sep or key not in VARIANTS["full"] or key == "seeds":
        raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE with KEY one of {[k for k in VARIANTS['full'] if k != 'seeds']} (seeds: --seeds)")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes: 3 domains, tiny splits, 1 epoch, 2 generations, 2 seeds")
    parser.add_argument("--name", default=None, help="results file stem (default: full or quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run seeds (default: 1 2 3; quick: 1 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="data, models, store, MLflow (default: bench/work/<variant>)")
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="where <name>.json/.md/_curves.png/_bars.png go")
    parser.add_argument(
        "--size", type=_size, action="append", default=[], metavar="KEY=VALUE",
        help=f"override one size of the variant, e.g. --size generations=15 --size dev=150 (keys: {', '.join(k for k in VARIANTS['full'] if k != 'seeds')})",
    )
    parser.add_argument("--keep-stores", action="store_true", help="keep each run's store folder (offspring weights; large)")
    parser.add_argument(
        "--setting", choices=("benchmark", "ablation", "cross-task", "families"), default="benchmark",
        help="benchmark: the result table; ablation: one factor at a time against the out-of-domain loss (bench/ablation.py); "
        "cross-task: members fine-tuned on different tasks, fused pair by pair and all together (bench/cross_task.py); "
        "families: MiniLM, a GPT-2 and a T5 pre-trained here, by classification head and rank classification (bench/families.py)",
    )
    parser.add_argument("--methods", nargs="+", default=None, help="ablation only: merging methods Evolver runs inside, and `plain` (default: average ties plain)")
    parser.add_argument("--resume", action="store_true", help="ablation and cross-task: keep the finished runs of <results>/<name>.json and run the rest")
    parser.add_argument(
        "--runs", nargs="+", default=None, metavar="RUN",
        help="ablation only: run just these runs of each method and seed (current, F=0.1, heads=identical, ...); the rest stay to do",
    )
    parser.add_argument(
        "--mask-stream", choices=MASK_STREAMS, default=MASK_STREAMS[0],
        help="Evolver's crossover stream (config `mask_stream`); torch-mt19937 reproduces results made before 2026-11-27",
    )
    parser.add_argument("--jobs", type=int, default=1, help="pipeline runs at once, in worker processes (2 on 2 CPU cores: one torch thread each)")
    parser.add_argument(
        "--rows", nargs="+", default=None, metavar="PATTERN",
        help="benchmark only: run just the pipeline rows whose name contains a PATTERN (e.g. guarded) and add them to <results>/<name>.json; "
        "seeds the benchmark lacks are added to it",
    )
    parser.add_argument("--skip", nargs="+", default=None, metavar="PATTERN", help="with --rows: leave out the rows whose name contains a PATTERN")
    args = parser.parse_args(argv)
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}.items():
        os.environ.setdefault(key, value)
    if args.setting == "ablation":
        from bench.ablation import run_ablation

        run_ablation(args, argv)
    elif args.setting == "cross-task":
        from bench.cross_task import run_cross_task

        run_cross_task(args, argv)
    elif args.setting == "families":
        from bench.families import run_families

        run_families(args, argv)
    else:
        run_benchmark(args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
