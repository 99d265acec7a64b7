"""Shared fixtures: tiny real BERT checkpoints and CSV data, and an isolated Airflow home.

Airflow reads its configuration when first imported, so the environment is set here, at import time.
"""

import os
import tempfile
from pathlib import Path

import pytest
import yaml

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="evolver-airflow-"))
os.environ.update(
    AIRFLOW_HOME=str(_AIRFLOW_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(Path(__file__).resolve().parents[1] / "dags"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
    EVOLVER_MAX_GENERATIONS="3",
    EVOLVER_MAX_ROUNDS="3",
    EVOLVER_RETRY_DELAY_SECONDS="0",
    EVOLVER_RECURRING_DIR=str(Path(__file__).resolve().parent / "dags" / "recurring"),
    EVOLVER_REGISTRY_CACHE=str(_AIRFLOW_HOME / "registry-cache"),  # Model Registry members, per test session
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_VERBOSITY="error",
)

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_population(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_config(tiny_population, tmp_path):
    """A valid run config over the tiny population, with its store and MLflow database in tmp_path."""
    conf = tiny.run_config(tiny_population, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path
from tests.servers import mlflow_server, s3_bucket, s3_endpoint  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_regression(tmp_path_factory):
    return tiny.build_regression(tmp_path_factory.mktemp("tiny-regression"))


@pytest.fixture(scope="session")
def tiny_ner(tmp_path_factory):
    return tiny.build_ner(tmp_path_factory.mktemp("tiny-ner"))


@pytest.fixture(scope="session")
def tiny_cross_task(tmp_path_factory):
    return tiny.build_cross_task(tmp_path_factory.mktemp("tiny-cross-task"))


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory):
    """(family, head) -> a tiny population, built on first use: GPT-2 or Llama without a pad token, as sequence
    classifiers (head "sequence") or causal LMs (head "lm"; GPT-2's tied, Llama's untied), or T5 ("t5", "lm")."""
    built: dict = {}

    def get(family: str, head: str = "sequence"):
        if (family, head) not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{family}-{head}")
            if family == "t5":
                built[family, head] = tiny.build_t5(folder)
            else:
                built[family, head] = (tiny.build_decoder if head == "sequence" else tiny.build_causal_lm)(folder, family)
        return built[family, head]

    return get
