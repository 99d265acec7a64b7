"""Name -> task type, the way `tasks.merge.registry` names merging methods. Torch-free: `tasks.config` reads it
at DAG-parse time.

Task types differ in five things only: how rows are labelled (`encode_labels`, and for token classification
how word tags meet sub-tokens), which `AutoModelFor...` class scores them, what a batch's forward pass gives
the scorer (`Task.forward`: logits, or rank classification's summed log-probabilities of each label's
verbalizer), which sufficient statistics a shard returns, and which metrics come from summed statistics. Everything else (data sources, tokenisation, shards,
fitness aggregates) is shared, so the stages never branch on the task type.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskType:
    name: str
    impl: str  # "module:Class": its encode_labels, scorer, add, size, metrics and fisher_loss
    auto_class: str  # the transformers Auto class whose head scores this task
    metrics: tuple[str, ...]  # what a config may pick as `metric`; the first is the default
    # Rows are lists of words with one tag each (token classification): tokenised as split words, each word's
    # tag on its first sub-token.
    words: bool = False
    # Rows carry a label (or tags, or a number). Language modeling reads text alone: its targets are its tokens.
    labelled: bool = True
    # The labels are the head's (config.json's label2id); generative models have no such head: the config's
    # verbalizers name the labels (rank classification).
    head_labels: bool = True
    # The Auto class for an encoder-decoder checkpoint (T5), where the type scores both kinds of generative model.
    seq2seq_auto_class: str | None = None

    def load(self) -> Any:
        module, name = self.impl.split(":")
        return getattr(importlib.import_module(module), name)


TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in (
        TaskType("sequence_classification", "tasks.taskpool.classification:Classification", "AutoModelForSequenceClassification", ("macro_f1", "accuracy", "mcc")),
        TaskType("regression", "tasks.taskpool.regression:Regression", "AutoModelForSequenceClassification", ("pearson", "spearman", "mse")),
        TaskType(
            "token_classification",
            "tasks.taskpool.tokens:TokenClassification",
            "AutoModelForTokenClassification",
            ("entity_f1", "entity_precision", "entity_recall", "token_accuracy"),
            words=True,
        ),
        TaskType("language_modeling", "tasks.taskpool.language:LanguageModeling", "AutoModelForCausalLM", ("neg_perplexity", "neg_loss"), labelled=False, head_labels=False),
        TaskType(
            "rank_classification",
            "tasks.taskpool.rank:RankClassification",
            "AutoModelForCausalLM",
            ("macro_f1", "accuracy", "mcc"),
            head_labels=False,
            seq2seq_auto_class="AutoModelForSeq2SeqLM",
        ),
    )
}

TASK_TYPE_NAMES: tuple[str, ...] = tuple(TASK_TYPES)
METRIC_NAMES: tuple[str, ...] = tuple(dict.fromkeys(m for t in TASK_TYPES.values() for m in t.metrics))
# Metrics where less is better. Fitness, the acceptance rule and the champion gate all maximise, so these are
# negated on the way in (`fitness_value`); reports keep the metric's own sign.
LOWER_IS_BETTER = frozenset({"mse"})


def get_task_type(name: str) -> TaskType:
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown task type {name!r}; registered: {', '.join(TASK_TYPE_NAMES)}") from None


def fitness_value(metric: str, value: float) -> float:
    """A metric's value on the scale that is maximised: itself, or its negation for LOWER_IS_BETTER."""
    return -value if metric in LOWER_IS_BETTER else value
