"""The heavy modules every pipeline task needs, imported once where Airflow forks its task processes from.

Under a real executor each task is a fresh process, and importing torch, transformers' model classes and
mlflow costs several seconds: more than an evaluate task's forward pass on the demo. Airflow 3.3's
LocalExecutor starts its workers from a `forkserver` that can import modules up front; every task forked
from a worker then inherits them, copy-on-write, instead of importing them again. Point it here:

    AIRFLOW__SCHEDULER__MP_START_METHOD=forkserver
    AIRFLOW__CORE__MP_FORKSERVER_PRELOAD=tasks.preload

Importing only loads code; it starts no threads and opens no files, so forking afterwards is safe. Model
families outside the list below still work; their first task in each process just imports them itself.
"""

import airflow.sdk  # noqa: F401  (what the DAG file needs when a task process parses it)
import boto3  # noqa: F401  (s3:// stores)
import datasets  # noqa: F401  (init_population reads the data)
import mlflow  # noqa: F401  (select, finalize and promote log to it)
import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401  (a database store maps its tables at import: ~1 s)
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import pandas  # noqa: F401
import safetensors.torch  # noqa: F401
import sklearn.metrics  # noqa: F401  (every score)
import torch  # noqa: F401
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401
from transformers.models.bert import modeling_bert  # noqa: F401  (MiniLM and BERT checkpoints)
from transformers.models.mpnet import modeling_mpnet  # noqa: F401
from transformers.models.roberta import modeling_roberta  # noqa: F401

from tasks import crossover, merge, stages, taskpool, tracking  # noqa: F401
from tasks.taskpool import base, classification, data, regression, tokens  # noqa: F401  (taskpool resolves them lazily)

if crossover.numba_available():
    # The offspring kernel, loaded from numba's on-disk cache (or compiled, the first time): make_offspring
    # tasks inherit it. Loading starts none of numba's worker threads; the first call in a task does.
    crossover.numba_kernel()
