import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def dagbag():
    """The DAGs folder parsed as the dag-processor does, on a freshly migrated metadata database."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="session")
def dag(dagbag):
    return dagbag.dags["evolver"]
