"""evolver-pipeline: knowledge fusion by evolving the weights of language models.

Importing this package is cheap on purpose: the Airflow DAG file imports `tasks.config` at parse time,
so torch, transformers and mlflow are imported only inside the modules that need them.
"""
