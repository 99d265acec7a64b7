#!/usr/bin/env bash
# One-shot setup of the Airflow side of the stack, run by the airflow-init service on every `up`:
#   1. migrate the metadata database (creates it on first start, upgrades it after an image update);
#   2. write the admin password for Airflow's simple auth manager (the api-server reads it from the shared
#      airflow-auth volume), so the login is the one set in docker/.env;
#   3. (re)create the connection aws_default for MinIO, from the same credentials as the tasks' environment.
# Every step is idempotent: a changed .env takes effect on the next `docker compose up`.
set -euo pipefail

airflow db migrate

python - <<'PY'
import json, os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
user = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0]
os.makedirs(os.path.dirname(path), exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
print(f"simple auth manager: password of user {user!r} written to {path}")
PY

conn_json=$(python - <<'PY'
import json, os

print(json.dumps({
    "conn_type": "aws",
    "description": "MinIO of the compose stack (run store and MLflow artifacts)",
    "login": os.environ["AWS_ACCESS_KEY_ID"],
    "password": os.environ["AWS_SECRET_ACCESS_KEY"],
    "extra": {"endpoint_url": os.environ["AWS_ENDPOINT_URL_S3"], "region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")},
}))
PY
)
airflow connections delete aws_default >/dev/null 2>&1 || true
# --conn-json keeps conn_type "aws" (with --conn-type the CLI turns types of providers that are not installed into
# "generic"); the amazon provider is not needed for that.
airflow connections add aws_default --conn-json "$conn_json" >/dev/null
echo "connection aws_default -> ${AWS_ENDPOINT_URL_S3}"
