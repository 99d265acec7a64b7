#!/usr/bin/env bash
# Runs once, when the postgres volume is empty (the image runs /docker-entrypoint-initdb.d/*.sh then).
# Creates one role and one database for Airflow's metadata and one for MLflow's tracking store.
# Passwords come from the environment (docker/.env); psql's :'var' quoting keeps them out of the SQL text.
set -euo pipefail

create_db() {
    local name="$1" password="$2"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v name="$name" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'name', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name') \gexec
SQL
}

create_db airflow "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
create_db mlflow "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
