"""Reliability, measured: faults survived, bad input refused before compute, concurrent runs.

    python -m bench.reliability               # the fault matrix (bench.fault_matrix): `faults_survived=<n> of <m>`
    python -m bench.reliability --inputs      # bad input: the table, then `bad_inputs_rejected=<n> of <m>`
    python -m bench.reliability --load        # scheduler restart and concurrent DAG runs (bench.load)

The rest of this module is the bad-input part.

Each case starts from a valid run over a tiny synthetic population (bench.memory's BERT builder with the
offline MiniLM tokenizer) and breaks one thing: a config value, a checkpoint, a data source. It runs
`evolver run` in this process with its own store and MLflow database. A case counts as rejected when all of
these hold:
- the exit code is 2 (an input error: a message, no traceback);
- the message names the problem (the case's expected words);
- nothing was computed: no offspring, evaluation or statistic in the store, no fused model;
- nothing reached the Model Registry;
- a secret the case planted (credentials in a URI) is not echoed.
The cases are also tests (`tests/test_reliability.py`), so `make test` runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@dataclass
class Workspace:
    """One case's folders: a copy of the valid population it may break, its store and its MLflow database."""

    root: Path
    population: dict[str, Any]
    conf: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)  # extra `evolver run` arguments
    config_text: str | None = None  # the YAML itself, for a case that breaks the file rather than a value

    def member(self, i: int) -> Path:
        return Path(self.conf["models"][i])

    def copy_member(self, i: int, name: str) -> Path:
        """A private copy of member i, put in its place in the config, for a case that damages it."""
        folder = self.root / name
        shutil.copytree(self.member(i), folder)
        self.conf["models"][i] = str(folder)
        return folder

    def write_dev(self, name: str, content: bytes | str) -> Path:
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        self.conf["data"]["dev"] = str(path)
        return path


@dataclass(frozen=True)
class Case:
    name: str
    injected: str
    expect: str  # words the error message must contain (case-insensitive)
    apply: Callable[[Workspace], None]


def _edit_tensors(folder: Path, edit: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _set_json(path: Path, **values: Any) -> None:
    content = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**content, **values}))


def _lying_header(w: Workspace) -> None:
    """A safetensors header whose byte range for a tensor is longer than its shape and dtype need (the shape,
    which the compatibility check compares, stays right)."""
    path = w.copy_member(1, "lying") / "model.safetensors"
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4096
    encoded = json.dumps(header, separators=(",", ":")).encode()
    assert len(encoded) <= size, "the edited header must fit the space of the old one"
    path.write_bytes(raw[:8] + encoded.ljust(size) + raw[8 + size :])


def _pickle_checkpoint(w: Workspace) -> None:
    import torch
    from safetensors.torch import load_file

    folder = w.copy_member(1, "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def _other_tokenizer(w: Workspace) -> None:
    """Same vocabulary size, other tokens: the embeddings' rows would mean other words."""
    folder = w.copy_member(1, "other-tokenizer")
    vocab = (folder / "vocab.txt").read_text().splitlines()
    specials, words = vocab[:1000], vocab[1000:]
    (folder / "vocab.txt").write_text("\n".join(specials + words[::-1]) + "\n")
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        tokenizer_json.unlink()


def _base_that_does_not_fit(w: Workspace) -> None:
    w.conf["merger"] = "task_arithmetic"
    w.conf["base_model"] = str(w.population["other_width"])


def _alias_bomb(w: Workspace) -> None:
    """`exclude` (a list of patterns) as 9 levels of 9 aliases each: 9^10 strings once expanded."""
    w.conf.pop("exclude", None)
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 10):
        levels.append(f"{chr(97 + level)}: &{chr(97 + level)} [{','.join([f'*{chr(96 + level)}'] * 9)}]")
    w.config_text = yaml.safe_dump(w.conf) + "bomb:\n" + "".join(f"  {line}\n" for line in levels) + "exclude: *j\n"


CASES: list[Case] = [
    # -- the config --
    Case("unknown key", "`--set learning_rate=0.1`", "learning_rate", lambda w: w.argv.extend(["--set", "learning_rate=0.1"])),
    Case("F out of range", "`F: 3`", "F", lambda w: w.conf.update(F=3)),
    Case("unknown merging method", "`merger: slerp`", "slerp", lambda w: w.conf.update(merger="slerp")),
    Case("one model", "a population of one", "models", lambda w: w.conf.update(models=w.conf["models"][:1])),
    Case("too many evaluate tasks", "6 models × 256 shards over max_map_length", "max_map_length", lambda w: w.conf.update(models=w.conf["models"] * 2, shards=256)),
    Case("more shards than dev batches", "`shards: 8` over 6 dev rows in batches of 8", "shards", lambda w: w.conf.update(shards=8)),
    Case("TIES without a base", "`merger: ties`, no base_model", "base_model", lambda w: (w.conf.update(merger="ties"), w.conf.pop("base_model"))),
    Case("a bad exclude pattern", "`exclude: ['(']`", "exclude", lambda w: w.conf.update(exclude=["("])),
    Case("nothing left to evolve", "`exclude: ['.']`", "no parameter is left", lambda w: w.conf.update(exclude=["."])),
    Case("YAML alias bomb", "9 levels of 9 aliases (9^10 nodes)", "alias", _alias_bomb),
    Case("credentials in a store URI", "`store: s3://KEY:SECRET@bucket/runs`", "credentials", lambda w: w.conf.update(store=f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs")),
    Case("path traversal in the run id", "`--run-id ../../elsewhere`", "run id", lambda w: w.argv.extend(["--run-id", "../../elsewhere"])),
    # -- the checkpoints --
    Case("missing model", "a folder that does not exist", "does not exist", lambda w: w.conf["models"].__setitem__(1, str(w.root / "nowhere"))),
    Case("model is a file", "a model path that is a file", "is a file", lambda w: w.conf["models"].__setitem__(1, str(w.population["dev"]))),
    Case("pickle checkpoint", "pytorch_model.bin instead of safetensors", "safetensors", _pickle_checkpoint),
    Case("header that lies about sizes", "a tensor's byte range 4 KiB longer than its shape needs", "spans", _lying_header),
    Case("NaN weights", "a NaN in a member's classifier", "non-finite", lambda w: _edit_tensors(w.copy_member(1, "nan"), lambda t: t["classifier.weight"].view(-1)[0].fill_(float("nan")))),
    Case("Inf weights", "an inf in a member's embeddings", "non-finite", lambda w: _edit_tensors(w.copy_member(1, "inf"), lambda t: t["bert.embeddings.word_embeddings.weight"].view(-1)[5].fill_(float("inf")))),
    Case("members of other shapes", "a member with another label count", "incompatibilit", lambda w: w.conf["models"].__setitem__(1, str(w.population["other_labels"]))),
    Case("members with other tokenizers", "same vocabulary size, other tokens", "tokenizer", _other_tokenizer),
    Case("a base that does not fit", "a base model of another width", "base", _base_that_does_not_fit),
    Case("custom code", "`auto_map` in a member's config.json", "custom code", lambda w: _set_json(w.copy_member(1, "custom") / "config.json", auto_map={"AutoModel": "x.Y"})),
    # -- the data --
    Case("labels outside the label space", "a dev label `sarcastic`", "sarcastic", lambda w: w.write_dev("dev.csv", "text,label\ngreat flight,positive\nyeah right,sarcastic\n")),
    Case("empty dev set", "a dev CSV with a header only", "no rows", lambda w: w.write_dev("dev.csv", "text,label\n")),
    Case("unreadable dev set", "a dev .parquet of random bytes", "cannot be read", lambda w: w.write_dev("dev.parquet", bytes(range(256)) * 8)),
    Case("non-UTF-8 text", "a Latin-1 dev CSV", "utf-8", lambda w: w.write_dev("dev.csv", "text,label\ncaf\xe9 was great,positive\n".encode("latin-1"))),
    Case("missing text column", "`text_column: tweet`", "tweet", lambda w: w.conf["data"].update(text_column="tweet")),
    Case("a dev folder of the wrong kind", "a folder of text files as the dev source", "dev", lambda w: (w.root.joinpath("notes").mkdir(), w.root.joinpath("notes", "a.txt").write_text("hi"), w.conf["data"].update(dev=str(w.root / "notes")))),
]


def build_population(root: Path) -> dict[str, Any]:
    """The valid population (3 members and a base), plus a base of another width and a member of another
    label count for the cases that need them."""
    from bench.memory import LABELS, build_population as build

    population = build(root / "population", hidden=64, layers=2, members=3)
    other_width = build(root / "other-width", hidden=96, layers=2, members=0)["base"]
    other_labels = root / "other-labels"
    shutil.copytree(population["members"][0], other_labels)
    _edit_tensors(other_labels, lambda t: (t.__setitem__("classifier.weight", t["classifier.weight"][:2].clone()), t.__setitem__("classifier.bias", t["classifier.bias"][:2].clone())))
    _set_json(other_labels / "config.json", id2label={"0": LABELS[0], "1": LABELS[1]}, label2id={LABELS[0]: 0, LABELS[1]: 1})
    return {**population, "other_width": other_width, "other_labels": other_labels}


def valid_config(population: dict[str, Any], folder: Path) -> dict[str, Any]:
    return {
        "models": list(population["members"]),
        "base_model": population["base"],
        "data": {"dev": population["dev"], "batch_size": 8, "max_length": 32},
        "generations": 1,
        "baselines": False,
        "device": "cpu",
        "store": str(folder / "store"),
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "registered_model": "reliability-fused",
    }


def run_case(case: Case, population: dict[str, Any], root: Path) -> dict[str, Any]:
    """Break one thing, run `evolver run`, and judge the outcome."""
    from tasks.cli import main

    folder = root / case.name.replace(" ", "-")
    folder.mkdir(parents=True)
    workspace = Workspace(folder, population, valid_config(population, folder))
    workspace.conf["models"] = [str(m) for m in workspace.conf["models"]]
    case.apply(workspace)
    config = folder / "config.yaml"
    config.write_text(workspace.config_text if workspace.config_text is not None else yaml.safe_dump(workspace.conf))
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["run", str(config), *workspace.argv])
        except BaseException as exc:  # noqa: BLE001 - a crash is an outcome of the case, not of the harness
            code = f"crashed: {type(exc).__name__}: {str(exc)[:200]}"
    message = (err.getvalue() + out.getvalue()).strip()
    computed = _computed(folder / "store")
    registered = _registered(folder / "mlflow.db")
    problems = []
    if code != 2:
        problems.append(f"exit {code}")
    if case.expect.lower() not in message.lower():
        problems.append(f"message lacks {case.expect!r}")
    if computed:
        problems.append(f"computed: {computed[0]}")
    if registered:
        problems.append(f"registered {registered}")
    if SECRET in message:
        problems.append("echoed the secret")
    return {
        "case": case.name,
        "injected": case.injected,
        "rejected": not problems,
        "problems": problems,
        "message": message.splitlines()[-1][:300] if message else "",
        "seconds": round(time.perf_counter() - started, 2),
    }


def _computed(store: Path) -> list[str]:
    """Store keys only compute writes: offspring, evaluations, statistics, the fused model."""
    if not store.exists():
        return []
    marks = ("gen=", "stats/", "fused", "final")
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and any(m in str(p.relative_to(store)) for m in marks))


def _registered(database: Path) -> int:
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(database)) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
        return db.execute("select count(*) from model_versions").fetchone()[0] if "model_versions" in tables else 0


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| case | injected | outcome | message |", "|---|---|---|---|"]
    for r in results:
        outcome = "rejected before compute" if r["rejected"] else "**not rejected**: " + "; ".join(r["problems"])
        lines.append(f"| {r['case']} | {r['injected']} | {outcome} | {r['message'].replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--inputs", action="store_true", help="the bad-input cases")
    what.add_argument("--load", action="store_true", help="the Airflow cases: a scheduler restart, four concurrent DAG runs")
    parser.add_argument("--cases", nargs="+", default=None, metavar="PATTERN", help="only the cases whose name contains a PATTERN (the fault matrix and --inputs)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table and results (JSON) here, as <output>.md/.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs' folders here (the fault matrix and --load; default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.load or not args.inputs:
        from tasks.progress import quiet_libraries

        quiet_libraries()
    if args.load:
        from bench.load import main as load

        return load(args)
    if not args.inputs:
        return faults(args)
    cases = [c for c in CASES if args.cases is None or any(p in c.name for p in args.cases)]
    with tempfile.TemporaryDirectory(prefix="evolver-reliability-") as tmp:
        root = Path(tmp)
        population = build_population(root)
        results = [run_case(case, population, root / "cases") for case in cases]
    table = report(results)
    print(table)
    if args.output:
        args.output.with_suffix(".md").write_text(table + "\n")
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    rejected = sum(r["rejected"] for r in results)
    print(f"bad_inputs_rejected={rejected} of {len(results)}")
    return 0 if rejected == len(results) else 1


def faults(args) -> int:
    from dataclasses import asdict

    from bench.fault_matrix import report as fault_report
    from bench.fault_matrix import run_matrix

    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evolver-faults-")))
        results = run_matrix(root, args.cases, log=lambda line: print(line, flush=True))
    from bench.run import machine

    table = fault_report(results)
    survived = sum(r.survived for r in results)
    last = f"faults_survived={survived} of {len(results)}"
    print(table)
    if args.output:
        where = machine()
        stamp = f"{time.strftime('%Y-%m-%d')}, {where['cpu_count']} CPUs, commit {(where['git_commit'] or '?')[:7]}{' (dirty)' if where['git_dirty'] else ''}"
        args.output.with_suffix(".md").write_text(f"{table}\n\n{last} ({stamp})\n")
        record = {"date": time.strftime("%Y-%m-%d"), "machine": where, "results": [asdict(r) for r in results], "summary": last}
        args.output.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(last)
    return 0 if survived == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
