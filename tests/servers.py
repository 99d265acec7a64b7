"""Real servers for tests, started once per session on free local ports: a moto S3 server.

Tests talk to them over HTTP exactly as production talks to AWS or MinIO, configured only through the
environment, so the code under test takes the same path as in a deployment.
"""

import os
import uuid

import pytest

from tasks.standalone import free_port


@pytest.fixture(scope="session")
def s3_endpoint():
    """The URL of a moto S3 server, also exported as AWS_ENDPOINT_URL_S3 with dummy credentials for the session.

    AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE point nowhere so that a developer's ~/.aws cannot leak in.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A new, empty bucket on the session's S3 server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """A real `mlflow server` subprocess: SQLite backend (registry included), artifacts proxied to the S3 server."""
    import subprocess
    import sys
    import time
    import urllib.request

    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow-artifacts")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", "s3://mlflow-artifacts/",
    ]  # fmt: skip
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
