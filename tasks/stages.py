"""The pipeline's stages. Each is `stage(conf, run_id, small inputs) -> small record`.

Both drivers call exactly these functions: `tasks.cli` loops them in process, `dags/evolver.py` wires
them as Airflow tasks. State lives in the run's store under deterministic keys; a stage that finds its
outputs complete returns them, and one that is retried rewrites identical bytes.

Store layout of one run (keys relative to `<store>/<run key>/`):
  run.json                                   resolved models, evolvable tensor names, tasks and their labels, MLflow run id
  template/*                                 the first member's files (config, tokenizer, weights): every
                                             worker builds models from here, so workers share only the store
                                             (cross-task: template/<task>/*, each member's, its head included)
  data/dev.safetensors, data/heldout/<name>.safetensors    tokenised once (cross-task: data/<task>/...)
  members/init/ind=<i>.safetensors           the fine-tuned members' evolvable tensors (member_files: link,
                                             the checkpoint's file itself, hard-linked)
  base.safetensors                           the pre-trained tensors, for task-vector merges
  stats/init/ind=<i>.safetensors             Fisher diagonals or Gram matrices of member i (statistic merges);
  stats/gen=<g>/ind=<i>.safetensors          ...recomputed from generation g's population when asked to
  init.json                                  completion marker of init_population
  gen=<g>/ind=<i>/offspring.safetensors      offspring of individual i in generation g
  gen=<g>/round=<r>/candidates.json          what round r evaluates (members of each candidate)
  gen=<g>/round=<r>/cand=<c>/shard=<s>.json  the task type's statistics of one (candidate, shard) work item
  gen=<g>/round=<r>/state.json               population after round r
  gen=<g>/population.json                    population after generation g (generation 0: the initial one)
  final/model/*, final/summary.json          the fused model (cross-task: final/model/<task>/*) and the run summary
  final/promotion.json                       the champion gate's decision (the run's last marker)

`context` arguments carry the orchestrator's identity of the calling task (Airflow DAG id, run id, task id,
try number, map index) as MLflow tags; the CLI passes none.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from tasks import faults
from tasks.config import ConfigError, EvolverConfig
from tasks.store import Store, StoreError, open_store, run_key, tensor_specs, widest_first

# Rounds a generation can need: N in the sequential schedule, at most 2 in the generational one.
GENERATIONAL_ROUNDS = 2


class Run:
    """One pipeline run: its validated config and its slice of the store."""

    def __init__(self, conf: dict[str, Any] | EvolverConfig, run_id: str):
        self.cfg = conf if isinstance(conf, EvolverConfig) else EvolverConfig.from_dict(conf)
        self.key = run_key(run_id)
        self.store: Store = open_store(self.cfg.store).scoped(self.key)
        self._templates: dict[int, Path] = {}

    @cached_property
    def record(self) -> dict[str, Any]:
        record = self.store.get_json_or_none("run.json")
        if record is None:
            raise StoreError(f"run {self.key} has no run.json in {self.store.uri}: run download_models first")
        return record

    @property
    def n(self) -> int:
        return len(self.cfg.models)

    @cached_property
    def tasks(self) -> list[RunTask]:
        """What fitness averages over: the one task of a single-task run, or each member's task (cross-task)."""
        from tasks import taskpool

        tasks = []
        for index, (spec, record) in enumerate(zip(self.cfg.task_list, self.record["tasks"])):
            impl = taskpool.task(spec.task_type, record["label2id"])
            tasks.append(RunTask(index, spec, impl, record["label2id"], record["num_labels"], record["data"], record["template"], record["files"]))
        return tasks

    def template(self, task: RunTask | None = None) -> Path:
        """A local folder with the files of the member whose head scores `task` (default: the first), fetched
        from the store (cached and verified on S3) once per Run."""
        task = task or self.tasks[0]
        if task.index not in self._templates:
            local = [self.store.local_path(f"{task.template}/{name}") for name in task.files]
            self._templates[task.index] = local[0].parent
        return self._templates[task.index]

    def task_of_member(self, member: int) -> RunTask:
        """The task whose data and head give member `member` its merge statistics: its own (cross-task), or the one."""
        return self.tasks[member] if self.cfg.cross_task else self.tasks[0]


@dataclass(frozen=True)
class RunTask:
    """One task of a run: its config (`spec`: data settings, name, metric), its task type's implementation, its
    head's labels, and where its data and its member's files (the template its models are built from) live."""

    index: int
    spec: Any  # tasks.config.TaskConfig
    impl: Any  # tasks.taskpool.Task
    label2id: dict[str, int]
    num_labels: int
    data: str  # store prefix of its encoded sets: data/dev.safetensors, data/heldout/<name>.safetensors
    template: str  # store prefix of its member's files
    files: list[str]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def batching(self) -> dict[str, Any]:
        return {"batch_size": self.spec.batch_size, "batch_tokens": self.spec.batch_tokens}


def rounds_needed(cfg: EvolverConfig) -> int:
    return len(cfg.models) if cfg.schedule == "sequential" else GENERATIONAL_ROUNDS


# -- download_models --------------------------------------------------------------------------------------


def download_models(
    conf: dict[str, Any], run_id: str, tags: dict[str, str] | None = None, max_generations: int | None = None, max_rounds: int | None = None
) -> dict[str, Any]:
    """Validate the config, resolve every checkpoint, check they can be fused, open the MLflow run."""
    run = Run(conf, run_id)
    cfg = run.cfg
    if max_generations is not None and cfg.generations > max_generations:
        raise ConfigError(f"generations: {cfg.generations} exceeds this DAG's maximum of {max_generations} (EVOLVER_MAX_GENERATIONS)")
    if max_rounds is not None and rounds_needed(cfg) > max_rounds:
        raise ConfigError(
            f"schedule: sequential with {run.n} models needs {run.n} rounds per generation; this DAG has {max_rounds} (EVOLVER_MAX_ROUNDS)"
        )
    existing = run.store.get_json_or_none("run.json")
    if existing is not None:
        return {"models": existing["models"], "mlflow_run_id": existing["mlflow_run_id"]}

    from tasks import modelpool, taskpool, tracking

    located = [modelpool.locate(source, cfg.tracking_uri) for source in cfg.models]
    folders, sources = [folder for folder, _ in located], [source for _, source in located]
    base = modelpool.resolve(cfg.base_model, cfg.tracking_uri) if cfg.base_model is not None else None
    for folder in [*folders, *([base] if base else [])]:
        modelpool.check_no_custom_code(folder)
    folders = [modelpool.as_safetensors(folder, cfg.allow_pickle) for folder in folders]
    base = modelpool.as_safetensors(base, cfg.allow_pickle) if base else None
    specs = cfg.task_list
    if cfg.cross_task:  # each member keeps its head: only the bodies must agree
        names = modelpool.shared_body(folders, [t.task_type for t in specs], cfg.exclude, [t.name for t in specs])
    else:
        modelpool.check_compatible(folders)
        names = modelpool.mergeable_names(folders[0], cfg.exclude, specs[0].task_type)
    tasks = []
    for index, spec in enumerate(specs):
        folder = folders[index]  # cross-task: member i's head scores task i; single-task: the first member's
        if taskpool.get_task_type(spec.task_type).head_labels:
            label2id, num_labels = modelpool.labels(folder)
        else:  # a generative model's labels are the config's (rank classification's verbalizers; none for LMs)
            label2id, num_labels = {name: i for i, name in enumerate(spec.label_names)}, len(spec.label_names)
        where = f"task {spec.name}: {cfg.models[index]}" if cfg.cross_task else str(cfg.models[index])
        taskpool.task(spec.task_type, label2id).check_head(num_labels, modelpool.architectures(folder), where)
        prefix = f"/{spec.name}" if cfg.cross_task else ""
        files = sorted(f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        tasks.append({"name": spec.name, "task_type": spec.task_type, "label2id": label2id, "num_labels": num_labels, "data": f"data{prefix}", "template": f"template{prefix}", "files": files})
    for folder in folders:
        modelpool.check_finite(folder, names)
        modelpool.pad_token_id(folder)  # raises where batches could not be padded
    based = {}
    if base is not None:
        based = modelpool.base_names(base, folders[0], names)
        modelpool.check_finite(base, list(based.values()))
    _copy_checkpoints(run, folders, names, base, based, tasks)
    # A registry member's version, pinned in the record: the alias may move on while the run goes on.
    pinned = {f"member.{i}": f"{s['source']} = version {s['registered_model']['version']}" for i, s in enumerate(sources) if "registered_model" in s}
    mlflow_run_id = tracking.start_run(cfg, run.key, {**(tags or {}), **pinned})
    from tasks.merge.statistics import input_major_weights

    record = {
        "models": [str(f) for f in folders],
        "sources": sources,
        "names": names,
        "input_major": sorted(set(input_major_weights(modelpool.meta_model(folders[0], specs[0].task_type))) & set(names)),
        "base_model": str(base) if base else None,
        "base_names": based,
        "tasks": tasks,
        "mlflow_run_id": mlflow_run_id,
        "config": cfg.resolved(),
    }
    run.store.put_json("run.json", record)  # the completion marker, last
    return {"models": record["models"], "mlflow_run_id": mlflow_run_id}


def _member_tensors(run: Run, key: str):
    """The tensors of one stored member (or offspring), read one at a time."""
    with run.store.open_tensors(key) as reader:
        for name in run.record["names"]:
            yield name, reader.get_tensor(name)


def _copy_checkpoints(run: Run, folders: list[Path], names: list[str], base: Path | None, based: dict[str, str], tasks: list[dict[str, Any]]) -> None:
    """Everything later stages read from the checkpoints goes into the store now: each member's evolvable
    tensors, the base model's matching tensors, and as templates the files of the first member (of every
    member in a cross-task run: their heads score their tasks)."""
    from tasks import modelpool

    link = run.cfg.member_files == "link"
    # Streamed tensor by tensor: a checkpoint is never whole in memory. A linked one holds its other tensors
    # too; every reader reads by name.
    for i, folder in enumerate(folders):
        key = f"members/init/ind={i}.safetensors"
        if link and len(files := modelpool.safetensors_files(folder)) == 1 and run.store.link_file(key, files[0]):
            continue
        specs = widest_first(modelpool.torch_specs(folder, names))
        run.store.put_tensor_stream(key, specs, modelpool.iter_tensors(folder, list(specs)))
    if base is not None:
        specs = widest_first(modelpool.torch_specs(base, [based[name] for name in names if name in based]))
        renamed = {base_name: name for name, base_name in based.items()}
        tensors = ((renamed[base_name], t) for base_name, t in modelpool.iter_tensors(base, list(specs)))
        run.store.put_tensor_stream("base.safetensors", {renamed[n]: spec for n, spec in specs.items()}, tensors)
    for folder, task in zip(folders, tasks):
        for name in task["files"]:
            if not (link and run.store.link_file(f"{task['template']}/{name}", folder / name)):
                run.store.put_file(f"{task['template']}/{name}", folder / name)


# -- init_population ---------------------------------------------------------------------------------------


def init_population(conf: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Tokenise every task's dev, held-out and gate data once (marking the dev rows that only validate), and
    compute the merge statistics of the members."""
    run = Run(conf, run_id)
    done = run.store.get_json_or_none("init.json")
    if done is not None:
        return done
    import torch
    from tasks import modelpool, taskpool
    from tasks.taskpool.rank import prompting

    cfg = run.cfg
    tokenizer = modelpool.load_tokenizer(run.template())  # the members share one (check_compatible, shared_body)
    sizes, tables = {}, {}
    for task in run.tasks:
        spec = task.spec
        # Named validation sources are encoded with the dev sources (after them): one file, one pass per candidate.
        sets = {"dev": spec.dev_sources + spec.validation_sources, **{f"heldout/{name}": source for name, source in spec.heldout.items()}}
        if cfg.gate_sources:
            sets["gate"] = cfg.gate_sources
        where = f"task {task.name}: " if cfg.cross_task else ""
        for name, source in sets.items():
            encoded = _encode_named(
                where,
                source,
                tokenizer=tokenizer,
                text_column=spec.text_column,
                label_column=spec.label_column,
                label2id=task.label2id,
                num_labels=task.num_labels,
                max_length=spec.max_length,
                text_pair_column=spec.text_pair_column,
                task_type=spec.task_type,
                **prompting(spec, run.template(task)),
            )
            if name == "dev":
                batches = len(taskpool.batch_bounds(encoded["lengths"], spec.batch_size, spec.batch_tokens)) - 1
                if cfg.shards > batches:  # before any statistic or score: a shard without rows would score nothing
                    raise ConfigError(
                        f"{where}shards: {cfg.shards} is more than the {batches} batch(es) of the dev data ({len(encoded['labels'])} rows); "
                        f"use at most {batches}, or a smaller batch_size"
                    )
                marks = taskpool.validation_rows(encoded["source"], validation=spec.validation, dev_sources=len(spec.dev_sources), seed=cfg.seed)
                encoded["validation"] = marks.to(torch.uint8)
                sizes[f"{task.name}/validation" if cfg.cross_task else "validation"] = int(encoded["validation"].sum())
            run.store.put_tensors(f"{task.data}/{name}.safetensors", encoded)
            sizes[f"{task.name}/{name}" if cfg.cross_task else name] = len(encoded["labels"])
            kind = taskpool.get_task_type(spec.task_type)
            description = source if isinstance(source, str) else " + ".join(source)
            context = f"{task.name}/{name}" if cfg.cross_task else name
            label_column = spec.label_column if kind.labelled else None
            tables[context] = (description, taskpool.table(source, spec.text_column, label_column, spec.text_pair_column, words=kind.words))
    from tasks import tracking

    tracking.log_datasets(cfg, run.record["mlflow_run_id"], tables)
    members = [f"members/init/ind={i}.safetensors" for i in range(run.n)]
    _ensure_statistics(run, 0, members)
    done = {"members": members, "examples": sizes}
    run.store.put_json("init.json", done)
    return done


def _encode_named(where: str, sources, **settings) -> dict[str, Any]:
    """`taskpool.encode`, its data errors prefixed with `where` (the task of a cross-task run)."""
    from tasks import taskpool

    try:
        return taskpool.encode(sources, **settings)
    except taskpool.DataError as err:
        if not where:
            raise
        raise taskpool.DataError(f"{where}{err}") from None


# -- merge statistics -------------------------------------------------------------------------------------


def _statistics_keys(run: Run, generation: int) -> list[str] | None:
    """Where the statistics used in `generation` live: computed once from the original members (the reference's
    choice), or from the generation's starting population when the method's `recompute` is set."""
    from tasks.merge import get_method

    if get_method(run.cfg.merger).statistic is None:
        return None
    folder = f"gen={generation}" if generation > 0 and run.cfg.method_params.recompute else "init"
    return [f"stats/{folder}/ind={i}.safetensors" for i in range(run.n)]


def _ensure_statistics(run: Run, generation: int, members: list[str]) -> None:
    """Compute the statistic of every member on dev data, unless already stored: in a cross-task run member i's
    through its own head, on its own task's dev data."""
    keys = _statistics_keys(run, generation)
    if keys is None or all(run.store.exists(k) for k in keys):
        return
    from tasks import evolve, modelpool
    from tasks.merge import get_method, statistics

    cfg = run.cfg
    fisher = get_method(cfg.merger).statistic == "fisher"
    device = modelpool.pick_device(cfg.device)
    for i, (key, member) in enumerate(zip(keys, members)):
        if run.store.exists(key):
            continue
        task = run.task_of_member(i)
        compute = partial(statistics.fisher_diagonals if fisher else statistics.input_grams, kind=task.impl)
        data = _fitness_rows(run.store.get_tensors(f"{task.data}/dev.safetensors"))
        # Statistics in float32 whatever the evaluation dtype: Fisher squares gradients, RegMean sums Gram matrices.
        model = modelpool.model_with(run.template(task), _member_tensors(run, member), device, "float32", task.spec.task_type)
        stats = compute(
            model,
            data,
            run.record["names"],
            batches=cfg.method_params.batches,
            batch_size=task.spec.batch_size,
            seed=evolve.derive_seed(cfg.seed, "statistics"),
        )
        # Streamed out, each tensor dropped once written: for RegMean they can be several times the model.
        specs = widest_first({name: (t.dtype, tuple(t.shape)) for name, t in stats.items()})
        run.store.put_tensor_stream(key, specs, ((name, stats.pop(name)) for name in list(specs)))
        del stats


def _fitness_rows(data: dict[str, Any]) -> dict[str, Any]:
    """The dev examples fitness may see: statistics come from them too, so validation stays unseen."""
    if "validation" not in data or not bool(data["validation"].any()):
        return data
    keep = data["validation"] == 0
    return {name: tensor[keep] for name, tensor in data.items()}


# -- make_offspring ---------------------------------------------------------------------------------------


def _initial_state(run: Run) -> dict[str, Any]:
    members = run.store.get_json("init.json")["members"]
    return {"generation": 0, "members": members, "fitness": None, "merged_fitness": None, "validation": None, "task_fitness": None, "lineage": [], "evaluations": 0}


def _state_before(run: Run, generation: int, round_: int) -> dict[str, Any] | None:
    """The population a round starts from, or None when the round is not needed."""
    if generation == 0:
        return _initial_state(run) if round_ == 0 else None
    if round_ == 0:
        previous = run.store.get_json_or_none(f"gen={generation - 1}/population.json")
        if previous is None:
            raise StoreError(f"generation {generation - 1} of run {run.key} has not completed")
        return previous
    state = run.store.get_json_or_none(f"gen={generation}/round={round_ - 1}/state.json")
    if state is None or state["done"]:
        return None
    return state


def _write_offspring(run: Run, generation: int, target: int, reference: int, members: list[str]) -> str:
    """One offspring, streamed tensor by tensor into the store: each is computed into one reused buffer per
    dtype (sized for the largest tensor) and written, so the process holds O(largest tensor), not a model."""
    import torch

    from tasks import evolve

    key = f"gen={generation}/ind={target}/offspring.safetensors"
    if run.store.exists(key):
        return key
    cfg = run.cfg
    names = run.record["names"]
    with run.store.open_tensors(members[target]) as x_i, run.store.open_tensors(members[reference]) as x_r:
        specs = widest_first(tensor_specs(x_i, names))
        buffers = {
            dtype: torch.empty(max(math.prod(shape) for d, shape in specs.values() if d == dtype), dtype=dtype)
            for dtype in {d for d, _ in specs.values()}
        }

        def offspring():
            for k, (name, (dtype, shape)) in enumerate(specs.items()):
                if k == len(specs) // 2:
                    faults.point("make_offspring.mid_stream")
                reuse = {"out": buffers[dtype][: math.prod(shape)]} if cfg.mask_stream == "counter" else {}
                yield name, evolve.offspring_tensor(
                    x_i.get_tensor(name),
                    x_r.get_tensor(name),
                    F=cfg.F,
                    CR=cfg.CR,
                    seed=cfg.seed,
                    generation=generation,
                    individual=target,
                    name=name,
                    stream=cfg.mask_stream,
                    **reuse,
                )

        run.store.put_tensor_stream(key, specs, offspring())
    return key


def _candidate(run: Run, state: dict[str, Any], generation: int, target: int) -> dict[str, Any]:
    from tasks import evolve

    cfg = run.cfg
    reference = evolve.choose_reference(
        target=target, n=run.n, fitness=state["fitness"], mode=cfg.mode, generation=generation, generations=cfg.generations, seed=cfg.seed
    )
    child = _write_offspring(run, generation, target, reference, state["members"])
    members = [child] if cfg.mode == "plain" else _replace(state["members"], {target: child})
    return {"targets": [target], "reference": reference, "offspring": child, "members": members}


def _replace(members: list[str], replacements: dict[int, str]) -> list[str]:
    return [replacements.get(i, key) for i, key in enumerate(members)]


def make_offspring(conf: dict[str, Any], run_id: str, generation: int, round_: int) -> list[list[dict[str, Any]]] | None:
    """Write the round's offspring and candidates; return its (candidate, shard) work items packed into
    evaluate tasks (`evaluate_tasks`), or None to skip the round."""
    run = Run(conf, run_id)
    cfg = run.cfg
    if generation > cfg.generations or round_ >= (1 if generation == 0 else rounds_needed(cfg)):
        return None
    state = _state_before(run, generation, round_)
    if state is None:
        return None
    if cfg.mode == "merge" and round_ == 0:
        _ensure_statistics(run, generation, state["members"])
    prefix = f"gen={generation}/round={round_}"
    plan = run.store.get_json_or_none(f"{prefix}/candidates.json")
    if plan is None:
        if generation == 0:
            if cfg.mode == "plain":
                candidates = [{"targets": [i], "reference": None, "members": [m]} for i, m in enumerate(state["members"])]
            else:
                candidates = [{"targets": [], "reference": None, "members": state["members"]}]
        elif cfg.schedule == "sequential":
            from tasks import evolve

            target = evolve.visit_order(cfg.seed, generation, run.n)[round_]
            candidates = [_candidate(run, state, generation, target)]
        elif round_ == 0:
            candidates = [_candidate(run, state, generation, i) for i in range(run.n)]
        else:  # generational merge, round 1: every improver of round 0 applied together
            pending = state["pending"]
            candidates = [
                {"targets": [p["target"] for p in pending], "reference": None, "members": _replace(state["members"], {p["target"]: p["offspring"] for p in pending})}
            ]
        plan = {"generation": generation, "round": round_, "candidates": candidates}
        run.store.put_json(f"{prefix}/candidates.json", plan)
    items = [{"generation": generation, "round": round_, "candidate": c, "shard": s} for c in range(len(plan["candidates"])) for s in range(cfg.shards)]
    return pack(items, cfg.evaluate_tasks)


def pack(items: list[dict[str, Any]], tasks: int | None) -> list[list[dict[str, Any]]]:
    """Consecutive runs of items, as even as can be, in at most `tasks` lists (None: one list per item).
    Consecutive items share a candidate, so a task merges each of its candidates once."""
    n = len(items) if tasks is None else min(tasks, len(items))
    size, extra = divmod(len(items), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(n)]


# -- evaluate ---------------------------------------------------------------------------------------------


def _candidate_tensors(run: Run, members: list[str], generation: int, device: Any = "cpu") -> Iterator[tuple[str, Any]]:
    """The evolvable tensors of a candidate, one at a time: one member as is, or the merge of the population
    with the configured method, tensor by tensor on `device`. Task-vector methods average the tensors the base
    lacks. A consumer that drops each tensor once used (`modelpool.model_with`) never holds a second model."""
    if len(members) == 1:
        yield from _member_tensors(run, members[0])
        return
    from contextlib import ExitStack

    import torch

    from tasks import evolve
    from tasks.merge import TensorGroup, get_method

    cfg = run.cfg
    method = get_method(cfg.merger)
    merge, params = method.load(), cfg.method_params
    average, average_params = get_method("average").load(), get_method("average").params()
    whole_tensor = method.load_whole_tensor()
    input_major = set(run.record.get("input_major", ()))  # absent from the records of runs before decoders
    with ExitStack() as stack:
        readers = [stack.enter_context(run.store.open_tensors(key)) for key in members]
        base = stack.enter_context(run.store.open_tensors("base.safetensors")) if method.needs_base else None
        stat_keys = _statistics_keys(run, generation)
        stats = [stack.enter_context(run.store.open_tensors(key)) for key in stat_keys] if stat_keys else None
        for name in run.record["names"]:
            averaged = method.needs_base and name not in run.record["base_names"]
            with_stats = not averaged and stats is not None and name in stats[0]
            dtype, shape = readers[0].spec(name)
            # Same-shape statistics (Fisher) are cut into blocks like the tensors; Gram matrices stay whole.
            cut_stats = with_stats and method.statistic == "fisher"
            inputs = len(readers) + (base is not None and not averaged) + (len(stats) if cut_stats else 0)
            # A tensor with a whole statistic (a Gram matrix) is merged whole: each block would repeat its solve.
            blocks = row_blocks(shape, dtype.itemsize * inputs, averaged or (method.row_blocks and (cut_stats or not with_stats)))
            seed = evolve.derive_seed(cfg.seed, "merge", name)
            thresholds, carry = None, ({} if len(blocks) > 1 else None)
            if len(blocks) > 1 and not averaged and whole_tensor is not None:
                thresholds = [
                    whole_tensor(partial(_read, reader, name, device), partial(_read, base, name, device), params, seed, i) for i, reader in enumerate(readers)
                ]
            merged = None
            for rows in blocks:
                # Beside whole Gram matrices (their tensors are never cut) the members are read one at a time too.
                tensors = _ReadOnAccess(readers, name, device) if with_stats and not cut_stats else [r.get_tensor(name, rows).to(device) for r in readers]
                group = TensorGroup(name, tensors, seed=seed, carry=carry, input_major=name in input_major)
                if not averaged:
                    if base is not None:
                        group.base = base.get_tensor(name, rows).to(device)
                    if cut_stats:
                        group.stats = [r.get_tensor(name, rows).to(device) for r in stats]
                    elif with_stats:
                        group.stats = _ReadOnAccess(stats, name, device)  # whole Gram matrices: one at a time
                    group.thresholds = thresholds
                piece = average(group, average_params) if averaged else merge(group, params)
                del group, tensors  # the members' copies of this block go before the next block's are read
                if rows is None:
                    merged = piece
                else:
                    merged = torch.empty(shape, dtype=piece.dtype, device=piece.device) if merged is None else merged
                    merged[rows] = piece
            yield name, merged
            del merged, piece  # the consumer holds the only copy now, and drops it before the next tensor


def _read(reader, name: str, device: Any):
    return reader.get_tensor(name).to(device)


class _ReadOnAccess(Sequence):
    """One tensor of every reader, read when indexed and not kept: a method that walks the members one after
    the other (RegMean over its weights and Gram matrices) holds one at a time."""

    def __init__(self, readers: list, name: str, device: Any):
        self.readers, self.name, self.device = readers, name, device

    def __len__(self) -> int:
        return len(self.readers)

    def __getitem__(self, i: int):
        return _read(self.readers[i], self.name, self.device)


# The bytes of the inputs (members, base, Fisher diagonals) one merge call may hold for one tensor: past it,
# a method whose rows are independent merges the tensor a block of rows at a time. A method's temporaries are
# a few times its inputs (TIES's about 5), so a block costs a bounded amount whatever the population size.
# 128 MiB left TIES on 5 members 0.08 GB over its target in bench.memory; 32 MiB costs no measurable time.
MERGE_BLOCK_BYTES = 32 * 2**20


def row_blocks(shape: tuple[int, ...], bytes_per_element: int, allowed: bool) -> list[slice | None]:
    """[None] (the whole tensor) when it fits MERGE_BLOCK_BYTES or cannot be cut, else blocks of rows that do."""
    total = math.prod(shape) * bytes_per_element
    if not allowed or len(shape) == 0 or shape[0] < 2 or total <= MERGE_BLOCK_BYTES:
        return [None]
    rows = max(1, shape[0] * MERGE_BLOCK_BYTES // total)
    return [slice(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


def _scored_models(run: Run, members: list[str], generation: int) -> list:
    """One model per task, each the candidate's tensors in that task's template: merged once, into the first
    task's model, and copied from it into the others, so every task is scored through its own member's head."""
    from tasks import modelpool

    device = modelpool.pick_device(run.cfg.device)
    first, *others = run.tasks
    model = modelpool.model_with(run.template(first), _candidate_tensors(run, members, generation, device), device, run.cfg.dtype, first.spec.task_type)
    models = [model]
    if others:
        body = model.state_dict()
        for task in others:
            tensors = ((name, body[name]) for name in run.record["names"])
            models.append(modelpool.model_with(run.template(task), tensors, device, run.cfg.dtype, task.spec.task_type))
    return models


def _statistics(run: Run, task: RunTask, model, data_key: str) -> Any:
    """The task type's statistics of `model` on a whole stored set of `task` (held-out, gate)."""
    data = run.store.get_tensors(f"{task.data}/{data_key}.safetensors")
    return task.impl.score(model, data, range(len(data["labels"])), num_labels=task.num_labels, **task.batching)[0]


def _dev_counts(run: Run, models: list, shard: int = 0, shards: int = 1) -> dict[str, dict[str, list]]:
    """Per task, the task type's statistics (confusion counts, entity counts, predictions) of its model on one
    dev shard of its data, one per dev source, apart for the rows fitness sees and the rows that only validate.
    Added up over shards they are exact whatever the shard count."""
    from tasks import taskpool

    counts = {}
    for task, model in zip(run.tasks, models):
        data = run.store.get_tensors(f"{task.data}/dev.safetensors")
        n_sources = len(task.spec.dev_sources) + len(task.spec.validation_sources)
        rows = taskpool.shard_range(len(data["labels"]), shards=shards, shard=shard, lengths=data["lengths"], **task.batching)
        groups = data["source"].long() * 2 + data["validation"].long()
        scored = task.impl.score(model, data, rows, num_labels=task.num_labels, groups=groups, n_groups=2 * n_sources, **task.batching)
        counts[task.name] = {"fitness": scored[0::2], "validation": scored[1::2]}
    return counts


def _sum_counts(run: Run, parts: list[dict[str, dict[str, list]]]) -> dict[str, dict[str, list]]:
    """Shard statistics added up per task, role and source, in shard order."""
    return {
        task.name: {role: [task.impl.add(per_source) for per_source in zip(*(p[task.name][role] for p in parts))] for role in ("fitness", "validation")}
        for task in run.tasks
    }


def _task_scores(run: Run, counts: dict[str, dict[str, list]], role: str = "fitness") -> dict[str, float]:
    """Each task's score (its metric, aggregated over its dev sources by `fitness_aggregate`, on the maximised scale)."""
    return {task.name: task.impl.aggregate(counts[task.name][role], task.spec.metric, run.cfg.fitness_aggregate) for task in run.tasks}


def _scores(run: Run, counts: dict[str, dict[str, list]]) -> tuple[float, float | None]:
    """Fitness (the unweighted mean of the tasks' scores; one task's score as it is) and, with validation data,
    the validation score, the same way."""
    fitness = math.fsum(_task_scores(run, counts).values()) / len(run.tasks)
    if run.tasks[0].spec.validation is None:
        return fitness, None
    return fitness, math.fsum(_task_scores(run, counts, "validation").values()) / len(run.tasks)


def evaluate(conf: dict[str, Any], run_id: str, items: list[dict[str, Any]], context: dict[str, str] | None = None) -> dict[str, Any]:
    """Score candidates on dev shards, one work item after the other; each item's result is its shard's
    statistics per task, source and role, under its own key (so a retried task redoes only what is missing)."""
    run = Run(conf, run_id)
    keys, scored = [], None  # (candidate, its model): consecutive items share a candidate, merged once
    for item in items:
        g, r, c, s = item["generation"], item["round"], item["candidate"], item["shard"]
        key = f"gen={g}/round={r}/cand={c}/shard={s}.json"
        keys.append(key)
        if run.store.exists(key):
            continue
        if scored is None or scored[0] != (g, r, c):
            candidate = run.store.get_json(f"gen={g}/round={r}/candidates.json")["candidates"][c]
            scored = ((g, r, c), _scored_models(run, candidate["members"], g))
        counts = _dev_counts(run, scored[1], s, run.cfg.shards)
        faults.point("evaluate.before_write")
        run.store.put_json(key, {"counts": counts, "item": item, "context": context or {}})
    return {"keys": keys}


# -- select -----------------------------------------------------------------------------------------------


def _fitness(run: Run, g: int, r: int, n_candidates: int) -> tuple[list[float], list[float | None], list[dict[str, str]], list[dict[str, float]]]:
    """Each candidate's fitness and validation score from its summed shard counts, who evaluated it (as tags),
    and, in a cross-task run, each task's score (empty otherwise)."""
    keys = [[f"gen={g}/round={r}/cand={c}/shard={s}.json" for s in range(run.cfg.shards)] for c in range(n_candidates)]
    missing = [k for row in keys for k in row if not run.store.exists(k)]
    if missing:
        raise StoreError(f"select: {len(missing)} shard results missing in {run.store.uri}, e.g. {missing[0]}")
    scores, validations, evaluated_by, by_task = [], [], [], []
    for row in keys:
        shards = [run.store.get_json(k) for k in row]
        counts = _sum_counts(run, [s["counts"] for s in shards])
        fitness, validation = _scores(run, counts)
        scores.append(fitness)
        validations.append(validation)
        by_task.append(_task_scores(run, counts) if run.cfg.cross_task else {})
        contexts = [s.get("context", {}) for s in shards]
        tags = sorted({k for c in contexts for k in c if k in ("airflow.map_index", "airflow.try_number", "airflow.task_id")})
        evaluated_by.append({f"evaluate.{k}": ",".join(str(c.get(k, "")) for c in contexts) for k in tags})
    return scores, validations, evaluated_by, by_task


def select(conf: dict[str, Any], run_id: str, generation: int, round_: int, context: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply the acceptance rule to the round's scores; write the next state (and the generation's population)."""
    from tasks import evolve, tracking

    run = Run(conf, run_id)
    cfg, g, r = run.cfg, generation, round_
    tolerance = cfg.validation_tolerance
    before = _state_before(run, g, r)
    plan = run.store.get_json(f"gen={g}/round={r}/candidates.json")
    candidates = plan["candidates"]
    scores, validations, evaluated_by, by_task = _fitness(run, g, r, len(candidates))
    state = {**before, "generation": g, "lineage": list(before["lineage"]), "evaluations": before["evaluations"] + len(candidates)}
    state["round_scores"] = (before.get("round_scores", []) if r > 0 else []) + scores
    state["accepted"] = before.get("accepted", 0) if r > 0 else 0
    state.pop("pending", None)
    done = True

    if g == 0:
        if cfg.mode == "plain":
            state["fitness"], state["validation"], state["task_fitness"] = scores, validations, by_task
            for i, (score, validation) in enumerate(zip(scores, validations)):
                _track_best_validation(state, g, [state["members"][i]], score, validation)
        else:
            state["merged_fitness"], state["validation"], state["task_fitness"] = scores[0], validations[0], by_task[0]
            _track_best_validation(state, g, state["members"], scores[0], validations[0])
    elif r > 0 and cfg.schedule == "generational":
        # All improvers together (candidate 0) against the best single improver already applied in `before`.
        combined = candidates[0]
        accepted = scores[0] > before["merged_fitness"] and evolve.within_tolerance(validations[0], before["validation"], tolerance)
        if accepted:
            state["members"], state["merged_fitness"], state["validation"] = combined["members"], scores[0], validations[0]
            state["task_fitness"] = by_task[0]
            state["accepted"] = len(combined["targets"])
            _track_best_validation(state, g, state["members"], scores[0], validations[0])
        for entry in state["lineage"]:
            if entry["generation"] == g and entry["target"] in combined["targets"]:
                entry["accepted"] = accepted or entry["accepted"]
    else:
        scored = [evolve.Scored(c["targets"][0], c["reference"], score, validation) for c, score, validation in zip(candidates, scores, validations)]
        by_target = {c["targets"][0]: c for c in candidates}
        if cfg.mode == "plain":
            accepted = evolve.plain_accepts(scored, state["fitness"], state["validation"], tolerance)
            state["fitness"], state["validation"], state["task_fitness"] = list(state["fitness"]), list(state["validation"]), list(state["task_fitness"])
            for t in accepted:
                k = candidates.index(by_target[t])
                state["members"] = _replace(state["members"], {t: by_target[t]["offspring"]})
                state["fitness"][t], state["validation"][t], state["task_fitness"][t] = scores[k], validations[k], by_task[k]
                _track_best_validation(state, g, [by_target[t]["offspring"]], scores[k], validations[k])
        else:
            improvers = evolve.merge_improvers(scored, state["merged_fitness"], state["validation"], tolerance)
            accepted = [improvers[0].target] if improvers else []
            if improvers:
                best = by_target[improvers[0].target]
                state["members"], state["merged_fitness"], state["validation"] = best["members"], improvers[0].fitness, improvers[0].validation
                state["task_fitness"] = by_task[candidates.index(best)]
                _track_best_validation(state, g, state["members"], improvers[0].fitness, improvers[0].validation)
            if len(improvers) > 1:  # generational: try them all together in the next round
                done = False
                state["pending"] = [{"target": i.target, "offspring": by_target[i.target]["offspring"]} for i in improvers]
        state["accepted"] += len(accepted)
        for sc, evaluators, tasks in zip(scored, evaluated_by, by_task):
            entry = {
                "generation": g,
                "round": r,
                "target": sc.target,
                "reference": sc.reference,
                "seed": evolve.derive_seed(cfg.seed, g, sc.target),
                "fitness": sc.fitness,
                "accepted": sc.target in accepted,
                "evaluated_by": evaluators,
            }
            if sc.validation is not None:
                entry["validation"] = sc.validation
            if tasks:  # cross-task: each task's score of the candidate
                entry["tasks"] = tasks
            state["lineage"].append(entry)
        if cfg.schedule == "sequential":
            done = r == run.n - 1

    state["done"] = done
    run.store.put_json(f"gen={g}/round={r}/state.json", state)
    if not done:
        return {"generation": g, "round": r, "done": False}
    record = generation_record(cfg, state)
    lineage = [entry for entry in state["lineage"] if entry["generation"] == g]
    tracking.log_generation(cfg, run.record["mlflow_run_id"], record, lineage, context)
    faults.point("select.after_tracking")
    run.store.put_json(f"gen={g}/population.json", state)  # the generation's completion marker, last
    return {**record, "round": r, "done": True}


def _track_best_validation(state: dict[str, Any], generation: int, members: list[str], fitness: float, validation: float | None) -> None:
    """Remember the accepted state (merge mode) or individual (plain mode) with the best validation score: the
    run's output when there is validation data. Only a strictly higher score replaces it, so ties keep the
    earlier, less evolved one."""
    if validation is None:
        return
    best = state.get("best_validation")
    if best is None or validation > best["validation"]:
        state["best_validation"] = {"generation": generation, "members": list(members), "fitness": fitness, "validation": validation}


def generation_record(cfg: EvolverConfig, state: dict[str, Any]) -> dict[str, Any]:
    """best/mean fitness of a generation: the population's own scores in plain mode; in merge mode the merged
    score (best) and the mean over the merged candidates evaluated in that generation. With validation data,
    also the validation score of the state (plain mode: of its best individual) and the best one so far."""
    if cfg.mode == "plain":
        best, mean = max(state["fitness"]), statistics.fmean(state["fitness"])
    else:
        best, mean = state["merged_fitness"], statistics.fmean(state["round_scores"])
    record = {
        "generation": state["generation"],
        "best_fitness": best,
        "mean_fitness": mean,
        "accepted": state.get("accepted", 0),
        "evaluations": state["evaluations"],
    }
    if cfg.cross_task:  # each task's score of the generation's best (its merge, or its best individual)
        if cfg.mode == "plain":
            record["task_fitness"] = state["task_fitness"][max(range(len(state["fitness"])), key=lambda i: (state["fitness"][i], -i))]
        else:
            record["task_fitness"] = state["task_fitness"]
    if "best_validation" in state:
        if cfg.mode == "plain":
            leader = max(range(len(state["fitness"])), key=lambda i: (state["fitness"][i], -i))
            record["validation"] = state["validation"][leader]
        else:
            record["validation"] = state["validation"]
        record["best_validation"] = state["best_validation"]["validation"]
    return record


# -- finalize ---------------------------------------------------------------------------------------------


def weights_sha256(state_dict: dict[str, Any]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _pooled(task: RunTask, by_source: list) -> dict[str, float]:
    return task.impl.metrics(task.impl.add(by_source))


def _report(run: Run, models: list, counts: dict[str, dict[str, list]] | None = None) -> dict[str, Any]:
    """Every task's report (`_task_report`): a single-task run's is the report; a cross-task run's are under
    `tasks`, and `dev.mean` is the unweighted mean of the tasks' dev metrics on the maximised scale (mse
    negated), the score the champion gate compares. `counts`: the models' dev statistics, when already known."""
    from tasks import taskpool

    counts = counts or _dev_counts(run, models)
    reports = {task.name: _task_report(run, task, model, counts[task.name]) for task, model in zip(run.tasks, models)}
    if not run.cfg.cross_task:
        return reports[run.tasks[0].name]
    mean = math.fsum(taskpool.fitness_value(t.spec.metric, reports[t.name]["dev"][t.spec.metric]) for t in run.tasks) / len(run.tasks)
    return {"tasks": reports, "dev": {"mean": mean}, "heldout": {}}


def _task_report(run: Run, task: RunTask, model, counts: dict[str, list]) -> dict[str, Any]:
    """Dev, validation, held-out (and gate) metrics of one task's model, plus the in-domain / out-of-domain means.
    `dev` covers the rows fitness sees (all dev rows without validation data), pooled; `dev_sources` each source."""
    spec, impl = task.spec, task.impl
    sources = spec.dev_sources + spec.validation_sources
    report: dict[str, Any] = {"dev": _pooled(task, counts["fitness"])}
    if len(sources) > 1:
        report["dev_sources"] = {source: impl.metrics(m) for source, m in zip(sources, counts["fitness"]) if impl.size(m)}
    if spec.validation is not None:
        report["validation"] = _pooled(task, counts["validation"])
        # Every dev row, fitness and validation alike (named validation sources included): comparable with the
        # `dev` of a run that selects on all of them.
        report["dev_all"] = _pooled(task, [*counts["fitness"], *counts["validation"]])
    heldout = {name: impl.metrics(_statistics(run, task, model, f"heldout/{name}")) for name in spec.heldout}
    groups = {
        "in_domain": [n for n in heldout if n not in spec.out_of_domain],
        "out_of_domain": [n for n in heldout if n in spec.out_of_domain],
    }
    means = {
        group: {m: statistics.fmean(heldout[n][m] for n in names) for m in impl.type.metrics}
        for group, names in groups.items()
        if names
    }
    report.update(heldout=heldout, heldout_mean=means)
    if run.cfg.gate_sources:
        report["gate"] = impl.metrics(_statistics(run, task, model, "gate"))
    return report


def _fused_sha256(run: Run, models: list) -> str:
    """weights_sha256 of the fused model; of a cross-task run's models together, each name under its task's."""
    if not run.cfg.cross_task:
        return weights_sha256(models[0].state_dict())
    return weights_sha256({f"{task.name}/{name}": t for task, model in zip(run.tasks, models) for name, t in model.state_dict().items()})


def _save_models(run: Run, models: list, out: Path) -> None:
    """The fused model in `out`; a cross-task run's one folder per task, `out/<task>`, each loadable with its
    task's Auto class."""
    for task, model in zip(run.tasks, models):
        _save_model(model, run.template(task), out / task.name if run.cfg.cross_task else out)


def finalize(conf: dict[str, Any], run_id: str, context: dict[str, str] | None = None) -> dict[str, Any]:
    """Fuse, evaluate on dev and held-out data, save the model, write the summary, log it all to MLflow."""
    from tasks import tracking

    run = Run(conf, run_id)
    done = run.store.get_json_or_none("final/summary.json")
    if done is not None:
        return done
    cfg, record = run.cfg, run.record
    population = run.store.get_json(f"gen={cfg.generations}/population.json")
    output = _output_of(run, population, cfg.generations)
    models = _scored_models(run, output["members"], output["generation"])
    final = _report(run, models, _stored_dev_counts(run, output["members"], output["generation"]))
    sha = _fused_sha256(run, models)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        _save_models(run, models, model_dir)
        for file in sorted(f for f in model_dir.rglob("*") if f.is_file()):
            run.store.put_file(f"final/model/{file.relative_to(model_dir).as_posix()}", file)
        summary = {
            "config": cfg.resolved(),
            "run_key": run.key,
            "generations": [generation_record(cfg, run.store.get_json(f"gen={g}/population.json")) for g in range(cfg.generations + 1)],
            "lineage": population["lineage"],
            "members": run.record.get("sources", [{"source": source} for source in cfg.models]),
            "final": {**final, "fitness": output["fitness"], **({"validation_score": output["validation"]} if "validation" in output else {})},
            "output": {k: v for k, v in output.items() if k != "members"},
            "baselines": _baselines(run) if cfg.baselines else {},
            "fused_model_uri": f"{run.store.uri}/final/model",
            **({"fused_models": {t.name: f"{run.store.uri}/final/model/{t.name}" for t in run.tasks}} if cfg.cross_task else {}),
            "fused_model_sha256": sha,
            "mlflow_run_id": record["mlflow_run_id"],
        }
        tracking.log_final(cfg, record["mlflow_run_id"], summary, model_dir)
        tracking.set_tags(cfg, record["mlflow_run_id"], {f"finalize.{k}": v for k, v in (context or {}).items()})
        faults.point("finalize.after_tracking")
        run.store.put_json("final/summary.json", summary)  # the completion marker, last
    return summary


def _stored_dev_counts(run: Run, members: list[str], generation: int) -> dict[str, dict[str, list]] | None:
    """The dev statistics evaluate stored for a candidate of these members in this generation, summed over its
    shards; None when no round of the generation scored one. Same members and generation build the same model
    (`_scored_models`), and shard statistics add up exactly, so they are what scoring it again would give."""
    for round_ in itertools.count():
        plan = run.store.get_json_or_none(f"gen={generation}/round={round_}/candidates.json")
        if plan is None:
            return None
        for c, candidate in enumerate(plan["candidates"]):
            keys = [f"gen={generation}/round={round_}/cand={c}/shard={s}.json" for s in range(run.cfg.shards)]
            if candidate["members"] == list(members) and all(run.store.exists(k) for k in keys):
                return _sum_counts(run, [run.store.get_json(k)["counts"] for k in keys])


def _output_of(run: Run, population: dict[str, Any], generation: int) -> dict[str, Any]:
    """What the population after `generation` yields: with validation data the accepted state (plain mode:
    individual) with the best validation score so far; else the best individual (plain mode) or the merge of
    the population. Its members, fitness, and the generation whose merge statistics it was scored with."""
    best = population.get("best_validation")
    if best is not None:
        return {"rule": "best validation score", "members": best["members"], "generation": best["generation"], "fitness": best["fitness"], "validation": best["validation"]}
    if run.cfg.mode == "plain":
        leader = max(range(run.n), key=lambda i: (population["fitness"][i], -i))
        return {"rule": "best individual", "members": [population["members"][leader]], "generation": generation, "fitness": population["fitness"][leader]}
    return {"rule": "last state", "members": population["members"], "generation": generation, "fitness": population["merged_fitness"]}


def population_report(conf: dict[str, Any], run_id: str, generation: int) -> dict[str, Any]:
    """Dev and held-out scores of what the population after `generation` yields. A diagnostic for studies of
    overfitting (the benchmark's ablation traces held-out scores across generations); the pipeline itself
    never calls it, and nothing selects on it."""
    run = Run(conf, run_id)
    output = _output_of(run, run.store.get_json(f"gen={generation}/population.json"), generation)
    models = _scored_models(run, output["members"], output["generation"])
    counts = _stored_dev_counts(run, output["members"], output["generation"])
    return {**_report(run, models, counts), "sha256": _fused_sha256(run, models), "output": {k: v for k, v in output.items() if k != "members"}}


def _save_model(model, template: Path, out: Path) -> None:
    """The model with its config's pad_token_id and a tokenizer that pads with it, so it batches as scored."""
    from tasks import modelpool

    model.save_pretrained(out, safe_serialization=True)
    modelpool.load_tokenizer(template).save_pretrained(out)


def _baselines(run: Run) -> dict[str, Any]:
    """Each fine-tuned member on its own and the plain merge of all of them, on the same data. In a cross-task
    run a member's row scores its body with every task's head: its own task's score is the individual model's."""
    members = run.store.get_json("init.json")["members"]
    names = [Path(folder).name for folder in run.record["models"]]
    if len(set(names)) < len(names):
        names = [f"model_{i}" for i in range(run.n)]
    rows = {name: _report(run, _scored_models(run, [key], 0)) for name, key in zip(names, members)}
    rows[run.cfg.merger] = _report(run, _scored_models(run, members, 0))
    return rows



# -- promote ----------------------------------------------------------------------------------------------


def promote(conf: dict[str, Any], run_id: str, context: dict[str, str] | None = None) -> dict[str, Any]:
    """Register the fused model as `challenger`; it becomes `champion` only if it beats the current champion by
    `gate_rule`, on this run's dev data and/or on `gate_data` (the champion is re-scored here, so both models
    see the same examples). Closes the MLflow run."""
    from tasks import tracking

    run = Run(conf, run_id)
    done = run.store.get_json_or_none("final/promotion.json")
    if done is not None:
        return done
    cfg = run.cfg
    summary = run.store.get_json("final/summary.json")
    mlflow_run_id = summary["mlflow_run_id"]
    if cfg.registered_model is None:
        decision = {"registered": False, "promoted": False, "reason": "registered_model is null: nothing registered"}
    else:
        # A cross-task run registers one model per task, `<registered_model>-<task>`, promoted together.
        names = _registered_names(run)
        versions = {name: tracking.register(cfg, mlflow_run_id, name, artifact) for name, artifact in names.items()}
        version = ",".join(versions.values())
        challenger = {"dev": summary["final"]["dev"][_gate_metric(run)]}
        if "gate" in summary["final"]:
            challenger["gate_data"] = summary["final"]["gate"][cfg.metric]
        decision = {"registered": True, "model": ",".join(names), "version": version, "gate_rule": cfg.gate_rule}
        decision.update({f"challenger_{k}": v for k, v in challenger.items()})
        faults.point("promote.before_gate")
        with tracking.champion_gate_lock(cfg, list(versions), holder=mlflow_run_id):  # read, compare, move: one step
            decision.update(_champion_gate(run, versions, challenger))
            if decision["promoted"]:
                for name, number in versions.items():
                    tracking.set_champion(cfg, number, name)
    gate_tags = {}
    if decision["registered"]:
        gate_tags = {"evolver.model_version": decision["version"], "evolver.gate_rule": cfg.gate_rule, "evolver.gate_decided_by": decision["decided_by"]}
        gate_tags.update({f"evolver.gate_margin_{k}": f"{v:+.6f}" for k, v in decision.get("margins", {}).items()})
    tracking.set_tags(
        cfg,
        mlflow_run_id,
        {
            "evolver.promoted": str(decision["promoted"]).lower(),
            "evolver.promotion_reason": decision["reason"],
            "mlflow.note.content": tracking.run_description(cfg, summary, decision),
            **gate_tags,
            **{f"promote.{k}": v for k, v in (context or {}).items()},
        },
    )
    tracking.finish(cfg, mlflow_run_id)
    run.store.put_json("final/promotion.json", decision)  # the run's last completion marker
    return decision


def gate_decision(rule: str, margins: dict[str, float]) -> tuple[bool, str]:
    """Whether the challenger wins, and which score decided, from its margins over the champion
    (challenger - champion): `dev` and `gate_data` need that score strictly higher; `both` needs neither lower
    and at least one higher."""
    if rule in ("dev", "gate_data"):
        return margins[rule] > 0, rule
    worse = [k for k in ("dev", "gate_data") if margins[k] < 0]
    if worse:
        return False, worse[0] if len(worse) == 1 else "dev and gate_data"
    better = [k for k in ("dev", "gate_data") if margins[k] > 0]
    return bool(better), " and ".join(better) if better else "dev and gate_data (equal)"


def _registered_names(run: Run) -> dict[str, str]:
    """Registered model name -> the run artifact it registers: the fused model, or one per task."""
    cfg = run.cfg
    if not cfg.cross_task:
        return {cfg.registered_model: "fused_model"}
    return {f"{cfg.registered_model}-{task.name}": f"fused_model/{task.name}" for task in run.tasks}


def _gate_metric(run: Run) -> str:
    """What the gate compares on dev data: the metric, or a cross-task run's mean over tasks (`dev.mean`)."""
    return "mean" if run.cfg.cross_task else run.cfg.metric


def _champion_gate(run: Run, versions: dict[str, str], challenger: dict[str, float]) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from tasks import modelpool, taskpool, tracking

    hf_logging.disable_progress_bar()
    cfg, metric = run.cfg, _gate_metric(run)
    version = ",".join(versions.values())
    current = {name: tracking.champion(cfg, name) for name in versions}
    faults.point("promote.in_gate")
    if any(c is None for c in current.values()):
        return {"promoted": True, "champion_before": None, "decided_by": "no champion", "reason": f"no champion yet: version {version} becomes champion"}
    before = ",".join(str(c.version) for c in current.values())
    if before == version:  # only this run's own earlier try can have promoted its versions
        reason = f"version {version} is the champion (promoted by an earlier try of this run)"
        return {"promoted": True, "champion_before": version, "decided_by": "earlier try", "reason": reason}
    models, artifacts = [], _registered_names(run)
    for task, (name, champion) in zip(run.tasks, current.items()):
        with tempfile.TemporaryDirectory() as tmp:
            artifact = artifacts[name]  # champions of a registered name come from runs of the same shape
            folder = tracking.download_model(cfg.tracking_uri, champion.run_id, Path(tmp), artifact)
            heads = modelpool.architectures(folder)
            if heads != modelpool.architectures(run.template(task)):
                reason = f"champion version {champion.version} of {name} is a {', '.join(heads) or 'model'} of another task type; it stays, compare by hand"
                return {"promoted": False, "champion_before": before, "decided_by": "labels", "reason": reason}
            model = modelpool.load_model(folder, task.spec.task_type, cfg.dtype)
        head_labels = taskpool.get_task_type(task.spec.task_type).head_labels  # a generative model's are the config's
        if head_labels and (model.config.num_labels != task.num_labels or {str(k): v for k, v in model.config.label2id.items()} != task.label2id):
            reason = f"champion version {champion.version} of {name} has other labels ({model.config.label2id}); it stays, compare by hand"
            return {"promoted": False, "champion_before": before, "decided_by": "labels", "reason": reason}
        models.append(model.to(modelpool.pick_device(cfg.device)).eval())
    counts = _dev_counts(run, models)
    reports = [_pooled(task, counts[task.name]["fitness"]) for task in run.tasks]
    if cfg.cross_task:
        champion_scores = {"dev": math.fsum(taskpool.fitness_value(t.spec.metric, r[t.spec.metric]) for t, r in zip(run.tasks, reports)) / len(run.tasks)}
    else:
        champion_scores = {"dev": reports[0][metric]}
    if "gate_data" in challenger:
        champion_scores["gate_data"] = run.tasks[0].impl.metrics(_statistics(run, run.tasks[0], models[0], "gate"))[metric]
    # On the maximised scale: a lower mse is a positive margin.
    margins = {k: taskpool.fitness_value(metric, challenger[k]) - taskpool.fitness_value(metric, champion_scores[k]) for k in champion_scores}
    promoted, decided_by = gate_decision(cfg.gate_rule, margins)
    verdict = "beats" if promoted else "does not beat"
    if cfg.gate_rule == "dev":
        reason = (
            f"challenger version {version} dev {metric} {challenger['dev']:.4f} {verdict} champion version {before} "
            f"{champion_scores['dev']:.4f} on this run's dev data"
        )
    else:
        scores = ", ".join(f"{k} {metric} {challenger[k]:.4f} vs {champion_scores[k]:.4f} ({margins[k]:+.4f})" for k in champion_scores)
        reason = f"challenger version {version} {verdict} champion version {before} by gate_rule {cfg.gate_rule} (decided by {decided_by}): {scores}"
    return {
        "promoted": promoted,
        "champion_before": before,
        **{f"champion_{k}": v for k, v in champion_scores.items()},
        "margins": margins,
        "decided_by": decided_by,
        "reason": reason,
    }


def mark_failed(conf: dict[str, Any], run_id: str) -> str | None:
    """Mark the run's MLflow run FAILED (the DAG's failure callback); None when no MLflow run was opened yet."""
    from tasks import tracking

    run = Run(conf, run_id)
    record = run.store.get_json_or_none("run.json")
    if record is None:
        return None
    tracking.fail_run(run.cfg.tracking_uri, record["mlflow_run_id"])
    return record["mlflow_run_id"]
