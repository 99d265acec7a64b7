"""The run configuration: one typed schema for the YAML file, the CLI, the DAG's trigger conf and its UI form.

Validation happens here, before any model is loaded: unknown keys, out-of-range numbers and
inconsistent settings raise `ConfigError` with one line per problem. The DAG builds its `Param`s
from `param_schemas()`, so the form, the YAML file and the CLI can never disagree.

This module must stay light (pydantic and yaml only): the DAG file imports it at parse time.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.merge.params import MergeParams
from tasks.merge.registry import MERGER_NAMES, METHODS
from tasks.taskpool.registry import METRIC_NAMES, TASK_TYPE_NAMES, TASK_TYPES

# Airflow's default [core] max_map_length: the most evaluate tasks one round may map.
MAX_EVALUATE_TASKS = 1024
# Crossover mask streams (tasks/evolve.py); the first is the default.
MASK_STREAMS = ("counter", "torch-mt19937")


class InputError(ValueError):
    """Bad input found before compute (config, checkpoints, data, store); the message says what and where."""

    # A retry cannot fix bad input, so the drivers fail at once; a subclass for an outage (a store that answers
    # again later) sets this, and its stage is retried like any other failure.
    transient = False


class ConfigError(InputError):
    """A configuration that cannot run; the message names every problem."""


class _Strict(BaseModel):
    # extra="forbid" is what turns a typo such as `generation: 3` into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataConfig(_Strict):
    # Fitness data. One source or a list of sources that are concatenated (one dev split per domain, as in the paper).
    # A source is a CSV / JSONL / Parquet file, a folder written by `datasets.save_to_disk`, or a hub id
    # (`name` or `name:split`, split defaulting to validation).
    dev: str | list[str] = Field(..., title="Dev data", description="Fitness data: a source or a list of sources, concatenated.")
    # Held-out sets, reported only and never used for selection. name -> source (or list of sources).
    heldout: dict[str, str | list[str]] = Field(
        default_factory=dict, title="Held-out data", description="name -> source; reported only, never selected on."
    )
    # Which held-out names are out-of-domain (domains no member was fine-tuned on); the rest count as in-domain.
    out_of_domain: list[str] = Field(
        default_factory=list, title="Out-of-domain sets", description="Names in `heldout` that no member was trained on."
    )
    # Guarded evolution: dev rows that fitness never sees. A fraction in (0, 1) holds back that share of every dev
    # source (a seeded draw per source and run seed); a list names whole sources, read like `dev`, that only
    # validate. Every evaluated candidate is also scored on them, the lineage records it, and the output is the
    # accepted state with the best validation score (early stopping on the lineage). null: no validation.
    validation: float | list[str] | None = Field(
        None,
        title="Validation data",
        description="A fraction of every dev source, or a list of sources, that fitness never sees; picks the output (best validation). null: off.",
    )
    text_column: str = Field("text", title="Text column")
    # Sentence-pair tasks (MRPC and RTE pair two sentences, BoolQ-style tasks a question and a passage) give every
    # example a second text, in this column: the tokenizer encodes the two as one pair, segments marked. null: one
    # text per example, the single-text tasks.
    text_pair_column: str | None = Field(
        None, title="Text pair column", description="The second text of a sentence-pair task (e.g. MRPC, RTE); null: single texts."
    )
    label_column: str = Field("label", title="Label column", description="Integer ids, or names found in the models' label2id (language modeling reads none).")
    # What the members' heads do, and so how rows are labelled and scored (tasks/taskpool/):
    # sequence_classification: a label per example (or pair), by confusion counts (accuracy, macro_f1, mcc);
    # regression: a number per example, a one-output head (num_labels: 1), by pearson, spearman or mse;
    # token_classification: a list of words and a list of IOB2 tags per row (or a CoNLL file), each tag on its
    # word's first sub-token, by entity F1 with seqeval's strict rules;
    # language_modeling: a text per row and no label, a causal LM (…ForCausalLM), by its token-weighted loss
    # (neg_perplexity or neg_loss): for domain-adapted LMs that no label set fits.
    task_type: Literal[TASK_TYPE_NAMES] = Field(  # type: ignore[valid-type]
        TASK_TYPE_NAMES[0], title="Task type", description="sequence_classification | regression | token_classification | language_modeling"
    )
    # rank_classification scores a generative model (a causal LM, or T5) as a classifier, without sampling: each
    # example is rendered through `prompt` ({text}, and {text_pair} for pairs), and the predicted label is the one
    # whose verbalizer has the highest summed log-probability after it (a causal LM's continuation, T5's decoder
    # target). `verbalizers` name the labels in order, {label: text}, or a list of labels that are their own
    # text. A verbalizer is tokenised on its own: start it with a space where the tokenizer marks word starts
    # (GPT-2's " positive"). null prompt: the text (and pair) joined by a space.
    prompt: str | None = Field(None, title="Prompt", description="rank_classification: a template with {text} (and {text_pair}); null: the text itself.")
    verbalizers: dict[str, str] | list[str] | None = Field(
        None, title="Verbalizers", description="rank_classification: {label: text} or a list of labels (their own text), in label order."
    )
    # 64 tokens covers the median tweet many times over; raise it for longer documents.
    max_length: int = Field(64, ge=8, le=4096, title="Max tokens")
    # Evaluation batch size. Shards are cut on batch boundaries, so scores do not depend on the shard count.
    batch_size: int = Field(64, ge=1, le=4096, title="Eval batch size")
    # A token budget per batch as well: consecutive examples while count x the batch's longest fits. On a GPU,
    # set a large batch_size and the tokens that fit (e.g. 65536); scores still do not depend on the shard count.
    batch_tokens: int | None = Field(None, ge=8, title="Eval batch tokens", description="At most this many padded tokens per batch; null: batch_size alone.")

    @model_validator(mode="after")
    def _ood_names_exist(self) -> DataConfig:
        unknown = sorted(set(self.out_of_domain) - set(self.heldout))
        if unknown:
            raise ValueError(f"out_of_domain names {unknown} are not keys of heldout {sorted(self.heldout)}")
        return self

    @model_validator(mode="after")
    def _prompts_for_generative_models(self) -> DataConfig:
        if self.task_type != "rank_classification":
            given = [k for k in ("prompt", "verbalizers") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only task_type rank_classification reads them")
            return self
        if not self.verbalizers or len(self.verbalizers) < 2:
            raise ValueError("rank_classification needs verbalizers for at least two labels ({label: text}, or a list of labels)")
        texts = self.verbalizer_texts
        if any(not t for t in texts) or len(set(texts)) < len(texts):
            raise ValueError(f"verbalizers must be non-empty and distinct, got {texts}")
        fields = {name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None}
        wanted = {"text", "text_pair"} if self.text_pair_column else {"text"}
        if fields != wanted:
            raise ValueError(f"prompt must name {sorted(wanted)} (in braces) and nothing else; it names {sorted(fields)}")
        return self

    @property
    def label_names(self) -> list[str]:
        """rank_classification: the labels, in order (their ids)."""
        return list(self.verbalizers or [])

    @property
    def verbalizer_texts(self) -> list[str]:
        v = self.verbalizers or []
        return [v[label] for label in v] if isinstance(v, dict) else [str(label) for label in v]

    @property
    def prompt_template(self) -> str:
        return self.prompt if self.prompt is not None else ("{text} {text_pair}" if self.text_pair_column else "{text}")

    @model_validator(mode="after")
    def _words_come_alone(self) -> DataConfig:
        if self.task_type == "token_classification" and self.text_pair_column is not None:
            raise ValueError("text_pair_column: token classification tags the words of one text; pairs are for sequence tasks")
        return self

    @field_validator("validation")
    @classmethod
    def _validation_in_range(cls, value: float | list[str] | None) -> float | list[str] | None:
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"a validation fraction must be between 0 and 1 (exclusive), got {value}")
        if isinstance(value, list) and not value:
            raise ValueError("validation sources: an empty list; use null for no validation")
        return value

    @model_validator(mode="after")
    def _validation_apart_from_dev(self) -> DataConfig:
        if isinstance(self.validation, list):
            shared = sorted(set(self.validation) & set(self.dev_sources))
            if shared:
                raise ValueError(f"validation sources {shared} are also dev sources: fitness would see them")
        return self

    @property
    def dev_sources(self) -> list[str]:
        return [self.dev] if isinstance(self.dev, str) else list(self.dev)

    @property
    def validation_sources(self) -> list[str]:
        """Named validation sources (a fraction holds back rows of the dev sources instead)."""
        return list(self.validation) if isinstance(self.validation, list) else []


_TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class TaskConfig(DataConfig):
    """One task of a cross-task fusion: the data of one member's task, read like the `data` block, with its name
    and metric. The member (same position in `models`) brings the head that scores it."""

    # Names the task in reports, MLflow metrics, the fused model's folder and its registered model.
    name: str = Field(..., pattern=_TASK_NAME, title="Task name", description="Letters, digits, _ . -; names the task's model and metrics.")
    # Left out: the task type's first metric (macro_f1, pearson, entity_f1, neg_perplexity).
    metric: Literal[METRIC_NAMES] | None = Field(None, title="Metric", description="Must fit task_type; null: the task type's first.")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _metric_fits(self) -> TaskConfig:
        allowed = TASK_TYPES[self.task_type].metrics
        if self.metric is None:
            self.metric = allowed[0]
        elif self.metric not in allowed:
            raise ValueError(f"task {self.name}: metric {self.metric} does not fit task_type {self.task_type}: use one of {', '.join(allowed)}")
        return self


class EvolverConfig(_Strict):
    # Fine-tuned checkpoints of one base model: local folders, s3:// prefixes, hub ids, or Model Registry versions
    # (models:/<name>@<alias>, models:/<name>/<version>: the champion can take part). At least two: the mutation
    # needs a reference.
    models: list[str] = Field(
        ..., min_length=2, title="Models", description="Fine-tuned checkpoints: local folders, s3:// prefixes, hub ids, or models:/<name>@<alias>."
    )
    # The pre-trained model the members were fine-tuned from. Needed by the merging methods that work on task
    # vectors (task_arithmetic, ties, dare); tensors it lacks (a fresh classification head) are averaged instead.
    base_model: str | None = Field(None, title="Base model", description="Pre-trained checkpoint; needed by task_arithmetic, ties, dare.")
    # A pickle checkpoint (pytorch_model.bin) can run code when it is loaded, so it is refused unless this is on.
    # Then it is read with torch.load(weights_only=True), which unpickles tensors and nothing else, and converted
    # to safetensors once (cached by its sha256) before any other stage reads it.
    allow_pickle: bool = Field(
        False, title="Allow pickle checkpoints", description="Read pytorch_model.bin checkpoints with torch.load(weights_only=True); off: refuse them."
    )
    # The store keeps its own copy of every member (and of the template), so that a checkpoint saved again while
    # a recurring run goes on cannot change the run's members. That is a second population on disk. `link`
    # hard-links a single-file safetensors checkpoint into a local store on the same filesystem instead: no
    # second copy, but a checkpoint rewritten in place (save_pretrained over the same folder) would change the
    # run. Where it cannot link (an S3 store, another filesystem, a sharded checkpoint) it copies.
    member_files: Literal["copy", "link"] = Field(
        "copy",
        title="Member files in the store",
        description="copy: the store keeps its own copy; link: hard links where it can (no second copy on disk; never rewrite a member in place).",
    )
    # Single-task fusion (members fine-tuned on domains of one task, one label space): the data block. Cross-task
    # fusion (members fine-tuned on different tasks, each keeping its own head): `tasks`, one per member in the
    # order of `models`. A config has one of the two, never both.
    data: DataConfig | None = Field(None, title="Data (single task)", description="The one task's data; or use `tasks`, never both.")
    # Cross-task: each member's head is kept, only the shared body is evolved and merged; fitness is the unweighted
    # mean of the tasks' metrics, each task scored with its own member's head on its own dev data.
    tasks: list[TaskConfig] | None = Field(
        None, title="Tasks (cross-task fusion)", description="One per member, in the order of models: name, dev, heldout, columns, task_type, metric."
    )
    # plain: fitness of an individual is its own dev score, output is the best individual.
    # merge: fitness is the dev score of merge(population); output is merge(final population). Every published
    # configuration of the paper uses merge mode.
    mode: Literal["plain", "merge"] = Field("merge", title="Mode", description="plain: evolve individuals; merge: evolve inside a merging method.")
    merger: Literal[MERGER_NAMES] = Field("average", title="Merger", description="Merging method used in merge mode and as the baseline.")  # type: ignore[valid-type]
    # Parameters of every registered method; only those of `merger` are used. Name only what you change.
    merge_params: MergeParams = Field(default_factory=MergeParams, title="Merging method parameters")
    # sequential: the reference code's order, one offspring at a time (parallelism only over dev shards).
    # generational: all offspring of a generation from one snapshot, evaluated at once.
    schedule: Literal["sequential", "generational"] = Field("generational", title="Schedule")
    # The paper's default is 15; each generation costs N evaluations (plus at most one in merge/generational).
    # 0 evolves nothing: the output is the plain merge (or the best member in plain mode), i.e. the baseline,
    # produced and scored by the same pipeline.
    generations: int = Field(15, ge=0, le=100, title="Generations", description="0 = the plain merge baseline.")
    # Mutation scale, v = x_i + F (x_r - x_i). 0.5 is the paper's default; F > 1 extrapolates past the reference.
    F: float = Field(0.5, ge=0.0, le=2.0, title="F (mutation scale)")
    # Per-coordinate crossover rate: each coordinate takes the mutant with probability CR.
    CR: float = Field(0.5, ge=0.0, le=1.0, title="CR (crossover rate)")
    # All randomness (reference choice, crossover masks, visit order) derives from (seed, generation, individual, tensor).
    seed: int = Field(1, ge=0, le=2**31 - 1, title="Seed")
    # Where the crossover masks come from. `counter`: a hash of (seed, generation, individual, tensor, index),
    # computed in one fused pass on the tensor's device (tasks/crossover.py). `torch-mt19937`: the CPU generator
    # per tensor of runs made before 2026-11-27, about 25 times slower; only to reproduce their results.
    mask_stream: Literal[MASK_STREAMS] = Field(  # type: ignore[valid-type]
        MASK_STREAMS[0], title="Mask stream", description="counter (default) or torch-mt19937 (reproduces runs made before 2026-11-27)."
    )
    # Dev-set shards per candidate; each (candidate, shard) pair is one work item. Scores are identical for any count.
    shards: int = Field(1, ge=1, le=256, title="Shards")
    # How a round's (candidate, shard) work items are packed into evaluate tasks: at most this many tasks, each
    # scoring its items one after the other in one process. A task costs a process start and a model build, so
    # on small models fewer, fuller tasks (one per CPU core or GPU) finish sooner. null: one task per item.
    evaluate_tasks: int | None = Field(
        None, ge=1, le=MAX_EVALUATE_TASKS, title="Evaluate tasks per round", description="Pack each round's work items into at most this many tasks; null: one per item."
    )
    # Regexes of parameter names that are not evolved or merged (e.g. ".*classifier.*"); those keep the first model's values.
    exclude: list[str] = Field(default_factory=list, title="Exclude", description="Regexes of parameter names kept from the first model.")
    # The fitness metric; it must fit data.task_type, and left out it is the task type's first: macro_f1 (it does
    # not reward predicting the majority class of a skewed domain), pearson, entity_f1 or neg_perplexity. mse is
    # minimised.
    metric: Literal[METRIC_NAMES] = Field(  # type: ignore[valid-type]
        "macro_f1", title="Fitness metric", description="classification: macro_f1, accuracy, mcc; regression: pearson, spearman, mse; tokens: entity_f1, ...; language modeling: neg_perplexity, neg_loss"
    )
    # How the dev sources make one fitness: pooled (one metric over every dev row: the paper's), mean_domain (the
    # mean of each source's metric: every domain weighs the same, whatever its size) or worst_domain (the lowest:
    # an offspring may not buy one domain with another). Validation scores are aggregated the same way.
    fitness_aggregate: Literal["pooled", "mean_domain", "worst_domain"] = Field(
        "pooled", title="Fitness aggregate", description="pooled | mean_domain | worst_domain over the dev sources."
    )
    # With validation data: an offspring is accepted only if its validation score is at most this much below the
    # current state's (0: validation may not drop at all). null: validation only picks the output.
    validation_tolerance: float | None = Field(
        None, ge=0.0, le=1.0, title="Validation tolerance", description="Reject offspring whose validation score drops more than this; null: no such rule."
    )
    # Also report every member and the plain merge on the held-out sets (the rows of the result table).
    baselines: bool = Field(True, title="Report baselines")
    # Where weights, statistics and records live: a folder, file:// or s3://bucket/prefix (endpoint and credentials
    # from the environment, or from the Airflow connection `aws_default` under Airflow).
    store: str = Field("evolver-runs/store", title="Store", description="Folder, file:// or s3://bucket/prefix for run state.")
    # MLflow tracking URI. The default is a local SQLite file with artifacts in a folder beside it.
    tracking_uri: str = Field("sqlite:///evolver-runs/mlflow.db", title="MLflow tracking URI")
    experiment: str = Field("evolver", title="MLflow experiment")
    # The fused model becomes a version of this registered model with the alias `challenger`, and takes the alias
    # `champion` only if it beats the current champion on this run's dev data. null registers nothing.
    registered_model: str | None = Field("evolver-fused", title="Registered model", description="Model Registry name; null to skip.")
    # The champion gate's own data: sources never used for selection, e.g. a probe set of recent production inputs
    # (read like `dev`, same columns). The challenger and the champion are both scored on them.
    gate_data: str | list[str] | None = Field(
        None, title="Gate data", description="Sources the champion gate scores both models on; never used for selection."
    )
    # What promotes the challenger to champion: dev (strictly better on this run's dev data), gate_data (strictly
    # better on gate_data) or both (worse on neither, strictly better on at least one).
    gate_rule: Literal["dev", "gate_data", "both"] = Field("dev", title="Gate rule", description="dev | gate_data | both")
    # auto uses CUDA when present.
    device: Literal["auto", "cpu", "cuda"] = Field("auto", title="Device")
    # The dtype candidates are evaluated (and the fused model saved) in. `checkpoint`: the members' own; bfloat16
    # halves memory traffic on a GPU. Merges, offspring and statistics are computed in float32 either way.
    dtype: Literal["checkpoint", "float32", "bfloat16", "float16"] = Field(
        "checkpoint", title="Evaluation dtype", description="checkpoint (the members' own), float32, bfloat16 or float16."
    )

    @model_validator(mode="before")
    @classmethod
    def _metric_of_the_task_type(cls, raw: Any) -> Any:
        # Left out, the metric is the task type's own first one (macro_f1 would not fit a regression).
        if isinstance(raw, dict) and "metric" not in raw and isinstance(raw.get("data"), dict):
            kind = TASK_TYPES.get(raw["data"].get("task_type", TASK_TYPE_NAMES[0]))
            if kind is not None:
                raw = {**raw, "metric": kind.metrics[0]}
        return raw

    @model_validator(mode="after")
    def _data_or_tasks(self) -> EvolverConfig:
        if (self.data is None) == (self.tasks is None):
            raise ValueError("give either `data` (single-task fusion) or `tasks` (cross-task fusion, one per model), not both" if self.data else "no data: give `data` (single-task fusion) or `tasks` (cross-task fusion, one per model)")
        if self.tasks is not None:
            if len(self.tasks) != len(self.models):
                raise ValueError(f"tasks: {len(self.tasks)} tasks for {len(self.models)} models; cross-task fusion takes one task per model, in the order of models")
            names = [t.name for t in self.tasks]
            if len(set(names)) < len(names):
                raise ValueError(f"tasks: names must differ, got {names}")
            guarded = [t.validation is not None for t in self.tasks]
            if any(guarded) and not all(guarded):
                raise ValueError("tasks: validation data in some tasks only; give every task validation data, or none")
        return self

    @model_validator(mode="after")
    def _metric_fits_the_task_type(self) -> EvolverConfig:
        if self.data is None:
            return self
        allowed = TASK_TYPES[self.data.task_type].metrics
        if self.metric not in allowed:
            raise ValueError(f"metric {self.metric} does not fit task_type {self.data.task_type}: use one of {', '.join(allowed)}")
        return self

    @field_validator("exclude")
    @classmethod
    def _regexes_compile(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"exclude pattern {pattern!r} is not a regex: {err}") from None
        return patterns

    @model_validator(mode="after")
    def _base_when_needed(self) -> EvolverConfig:
        if METHODS[self.merger].needs_base and self.base_model is None:
            raise ValueError(f"merger {self.merger} works on task vectors and needs base_model (the pre-trained checkpoint)")
        return self

    @model_validator(mode="after")
    def _guards_have_their_data(self) -> EvolverConfig:
        if self.validation_tolerance is not None and self.task_list[0].validation is None:
            raise ValueError("validation_tolerance needs validation data (data.validation: a fraction or sources)")
        if self.gate_rule != "dev" and self.gate_data is None:
            raise ValueError(f"gate_rule {self.gate_rule} needs gate_data (the sources the gate scores both models on)")
        if self.gate_data is not None:
            gate = [self.gate_data] if isinstance(self.gate_data, str) else list(self.gate_data)
            if self.tasks is not None:
                raise ValueError("gate_data: a cross-task champion gate compares the tasks' mean dev score; gate_data is single-task only")
            shared = sorted(set(gate) & set(self.data.dev_sources + self.data.validation_sources))
            if shared:
                raise ValueError(f"gate_data {shared} is also dev or validation data: the gate must see what selection never did")
        return self

    @model_validator(mode="after")
    def _rounds_fit_one_mapped_task(self) -> EvolverConfig:
        # A round scores all its candidates at once (one per model in the generational schedule and in plain
        # mode's first generation), each on every dev shard; the DAG maps one evaluate task over those work
        # items, or over `evaluate_tasks` packs of them.
        candidates = 1 if self.schedule == "sequential" and self.mode == "merge" else len(self.models)
        items = candidates * self.shards
        if items > MAX_EVALUATE_TASKS and self.evaluate_tasks is None:  # (evaluate_tasks itself is capped)
            raise ValueError(
                f"{candidates} candidates x {self.shards} shards = {items} evaluate tasks in one round, more than the "
                f"{MAX_EVALUATE_TASKS} one mapped Airflow task may have ([core] max_map_length): use fewer shards, or "
                f"pack them with evaluate_tasks"
            )
        return self

    @property
    def cross_task(self) -> bool:
        return self.tasks is not None

    @property
    def task_list(self) -> list[TaskConfig]:
        """The tasks fitness averages over: `tasks`, or the single task of the data block (named `data`)."""
        if self.tasks is not None:
            return list(self.tasks)
        return [TaskConfig(name="data", metric=self.metric, **self.data.model_dump())]

    @property
    def gate_sources(self) -> list[str]:
        return [] if self.gate_data is None else [self.gate_data] if isinstance(self.gate_data, str) else list(self.gate_data)

    @property
    def method_params(self):
        """The parameters of the configured merging method."""
        return getattr(self.merge_params, self.merger)

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvolverConfig:
        refuse_credentials(raw)  # before validation: its messages quote the values they reject
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(_describe(err)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> EvolverConfig:
        raw = load_yaml(Path(path).read_text(), str(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
        for item in overrides:
            apply_override(raw, item)
        return cls.from_dict(raw)

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def models_from_events(events: list[tuple[Any, dict[str, Any]]]) -> list[str] | None:
    """The checkpoints named by the newest checkpoint-landed event: (timestamp, extra) pairs, where a producer
    puts `{"models": [...]}` in the extra. None when no event names any."""
    named = sorted((when, extra["models"]) for when, extra in events if isinstance(extra, dict) and extra.get("models"))
    if not named:
        return None
    models = named[-1][1]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"asset event extra `models` must be a list of checkpoint names, got {models!r}")
    return models


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `--set dotted.key=value` in place; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a mapping")
    node[parts[-1]] = load_yaml(value, f"--set {key}")


class _NoAliases(yaml.SafeLoader):
    """Safe YAML without aliases: a run config has no use for them, and a few nested ones (an "alias bomb")
    expand to billions of nodes once the config is validated or logged."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"{self.name}: line {mark.line + 1}: a YAML alias (*name); aliases are not allowed in a run config")
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str) -> Any:
    """One YAML document, safely and without aliases; a syntax error names `where`."""
    loader = _NoAliases(text)
    loader.name = where
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


_URI_WITH_CREDENTIALS = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]*@")


def refuse_credentials(raw: Any, path: str = "") -> None:
    """A URI with user:secret@ in it would land in logs, MLflow params and the run store: refuse it, naming
    the key and never the value."""
    if isinstance(raw, str) and _URI_WITH_CREDENTIALS.match(raw):
        raise ConfigError(
            f"{path or 'config'}: a URI with credentials in it (scheme://user:secret@...); give them through the "
            "environment (AWS_ACCESS_KEY_ID, ...) or an Airflow connection, never in a config"
        )
    items = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
    for key, value in items:
        refuse_credentials(value, f"{path}.{key}" if path and isinstance(key, str) else f"{path}[{key}]" if path else str(key))


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "config"
        if problem["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        else:
            lines.append(f"{where}: {problem['msg']} (got {problem.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def param_schemas() -> dict[str, dict[str, Any]]:
    """One JSON schema per top-level key, `$ref`s inlined and `default` filled where the key has one."""
    schema = EvolverConfig.model_json_schema()
    defs = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                # The field's own keywords (its title, description, default) override the referenced model's.
                siblings = {k: inline(v) for k, v in node.items() if k != "$ref"}
                return {**inline(defs[node["$ref"].split("/")[-1]]), **siblings}
            return {k: inline(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    def optional_block(node: dict) -> dict:
        # `data` and `tasks` are each optional (one or the other): a nullable object or array with its
        # properties at the top, which the Airflow form renders as the block itself rather than a choice.
        kinds = node.get("anyOf", [])
        blocks = [k for k in kinds if k.get("type") in ("object", "array")]
        if len(kinds) == 2 and len(blocks) == 1 and {"type": "null"} in kinds:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return {**blocks[0], **rest, "type": [blocks[0]["type"], "null"]}
        return node

    params = {}
    for name, prop in schema["properties"].items():
        params[name] = optional_block(inline(prop))
        field = EvolverConfig.model_fields[name]
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            params[name]["default"] = default.model_dump(mode="json") if isinstance(default, BaseModel) else default
    return params

