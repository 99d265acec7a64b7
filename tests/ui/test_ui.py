"""The user's first hour, in real Chromium against real `airflow standalone` and `mlflow server` processes on
127.0.0.1 with a tiny population: the Airflow DAG page and its docs, the trigger form and its validation, a
run's grid, a failed run's log, and the MLflow run, its charts, artifacts, description and registry aliases.

`make ui-test` runs these (it installs Debian's chromium when missing). The tests run in file order, each on
the state the previous one left: one Airflow, one MLflow, one browser for the module. Each screen is saved
under `.ui-test/`.
"""

import ast
import json
import re
import shutil
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tasks.config import EvolverConfig
from tasks.standalone import Api, airflow_environment, free_port, start_airflow, stop, wait
from tests import tiny

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".ui-test"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DAG = "evolver"
TIMEOUT_MS = 30_000
STATE: dict = {}  # what an earlier test made (the run ids) for the later ones


@pytest.fixture(scope="module")
def stack(tiny_population, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    conf = {**tiny.run_config(tiny_population, root), "tracking_uri": mlflow_server, "registered_model": "evolver-ui"}
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(conf))
    home, port = root / "airflow", free_port()
    extra = {
        "EVOLVER_DEFAULT_CONFIG": str(config),
        "EVOLVER_MAX_GENERATIONS": "3",
        "EVOLVER_MAX_ROUNDS": "2",
        "EVOLVER_RETRY_DELAY_SECONDS": "0",
        "AIRFLOW__CORE__PARALLELISM": "4",
    }
    process = start_airflow(home, airflow_environment(home, port, extra))
    try:
        api = Api(f"http://127.0.0.1:{port}")
        wait("api-server", lambda: api.call("GET", "/api/v2/monitor/health"), timeout=240)
        api.login(home)
        wait("DAG parsed", lambda: api.call("GET", f"/api/v2/dags/{DAG}"), timeout=240, interval=2)
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        yield SimpleNamespace(api=api, url=api.base, password=password, conf=conf, root=root, mlflow=mlflow_server)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def page(stack):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _open_dialog(page):
    dialog = page.locator("[role=dialog][data-state=open]")
    dialog.wait_for()
    return dialog


def _run_state(stack, run_id: str) -> str:
    return stack.api.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"]


def _wait_for_run(stack, run_id: str, timeout: float = 600) -> str:
    return wait(f"run {run_id}", lambda: (s := _run_state(stack, run_id)) in ("success", "failed") and s, timeout=timeout, interval=2)


def _runs(stack) -> list[str]:
    return [r["dag_run_id"] for r in stack.api.call("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]]


# -- Airflow ------------------------------------------------------------------------------------------------


def test_login_and_the_dag_docs_panel_renders_doc_md(stack, page):
    page.goto(stack.url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", stack.password)
    page.keyboard.press("Enter")
    page.wait_for_load_state("networkidle")  # the login's redirects, before navigating on
    page.goto(f"{stack.url}/dags/{DAG}")
    page.get_by_role("button", name="Trigger Dag").wait_for()
    _shot(page, "airflow-dag")
    page.get_by_role("button", name="Dag Docs").click()
    docs = _open_dialog(page)
    docs.get_by_text("Evolver: knowledge fusion by evolving the weights of language models").wait_for()
    doc_md = ast.get_docstring(ast.parse((REPO / "dags" / "evolver.py").read_text()))  # the DAG's doc_md=__doc__
    first_paragraph = doc_md.split("\n\n")[1].split("(Du et al.")[0].strip()
    assert " ".join(first_paragraph.split()) in " ".join(docs.inner_text().split())
    _shot(page, "airflow-docs")
    page.keyboard.press("Escape")


def test_trigger_form_has_every_config_key_with_its_title_and_description(stack, page):
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = _open_dialog(page)
    dialog.get_by_text("Run Parameters").wait_for()
    labels = [" ".join(label.inner_text().replace("*", "").split()) for label in dialog.locator("label").all()]
    text = " ".join(dialog.inner_text().split())
    for key, schema in EvolverConfig.model_json_schema()["properties"].items():
        assert schema["title"] in labels, f"{key}: no field titled {schema['title']!r}"
        if schema.get("description"):
            assert " ".join(schema["description"].split()) in text, f"{key}: description not shown"
    # The demo config is the form's defaults.
    assert dialog.locator("input[name=element_generations]").input_value() == "3"
    assert dialog.locator("input[name=element_shards]").input_value() == "2"
    _shot(page, "airflow-trigger-form")


def test_an_out_of_range_F_is_refused_with_a_visible_message_before_a_run_exists(stack, page):
    dialog = _open_dialog(page)
    # The F field itself cannot hold 7: it keeps the value within the schema's [0, 2].
    field = dialog.locator("input[name=element_F]")
    field.fill("7")
    field.press("Tab")
    assert field.input_value() == "2"
    field.fill("0.5")
    field.press("Tab")
    # F = 7 in the run's JSON (Advanced Options) reaches the server, which refuses it with the schema's message.
    dialog.get_by_text("Advanced Options").click()
    dialog.locator(".monaco-editor").last.click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(json.dumps({**stack.conf, "F": 7}))
    dialog.get_by_role("button", name="Trigger").click()
    dialog.get_by_text("Invalid input for param F: 7 is greater than the maximum of 2.0").wait_for()
    _shot(page, "airflow-trigger-refused")
    assert _runs(stack) == []
    page.keyboard.press("Escape")


def test_valid_values_trigger_a_run_that_succeeds_in_the_grid(stack, page):
    page.reload()
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = _open_dialog(page)
    dialog.locator("input[name=element_generations]").fill("2")
    dialog.locator("input[name=element_F]").fill("0.3")
    dialog.locator("input[name=element_F]").press("Tab")
    with page.expect_response(lambda r: r.url.endswith(f"/dags/{DAG}/dagRuns") and r.request.method == "POST") as response:
        dialog.get_by_role("button", name="Trigger").click()
    run = response.value.json()
    assert response.value.status == 200 and run["conf"]["generations"] == 2 and run["conf"]["F"] == 0.3
    STATE["run"] = run["dag_run_id"]
    assert _wait_for_run(stack, run["dag_run_id"]) == "success"

    _open_grid_expanded(page, f"{stack.url}/dags/{DAG}/runs/{urllib.parse.quote(run['dag_run_id'], safe='')}")
    header = page.locator("h2, [data-testid=dag-run-header]").filter(has_text=run["dag_run_id"]).first
    header.wait_for()
    page.get_by_text("Success", exact=True).first.wait_for()
    _shot(page, "airflow-grid")


def _open_grid_expanded(page, url: str) -> None:
    """The run's page with every task group open. The grid draws its expand/collapse toggle only once the DAG's
    structure has loaded; on a busy 2-core machine that once took past 30 s after a run had just finished
    (CI, 2026-11-29), so a page that has not drawn it in a minute is loaded once more. An expand button that is
    disabled means every group is open already."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    expand = page.get_by_role("button", name="Expand all task groups")
    for attempt in range(2):
        page.goto(url)
        try:
            expand.wait_for(timeout=60_000)
            break
        except PlaywrightTimeout:
            if attempt:
                raise
    if expand.is_enabled():
        expand.click()


def _tooltip_state(page, run_id: str, task_id: str) -> str:
    """The state a grid cell's tooltip names. A tooltip opens after a short hover delay, and one left open by
    the previous cell can swallow the next hover, so each try starts away from the grid."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tooltip = page.locator("[data-part=content][data-state=open]").filter(has_text=f"Task ID: {task_id}")
    for _ in range(3):
        page.mouse.move(700, 10)
        page.wait_for_timeout(300)
        page.get_by_test_id(f"grid-{run_id}-{task_id}").hover()
        try:
            tooltip.wait_for(timeout=5000)
            break
        except PlaywrightTimeout:
            continue
    return re.search(r"State: (\w+)", tooltip.inner_text()).group(1)


def test_mapped_evaluate_tasks_show_their_labels_and_the_unused_generation_is_skipped(stack, page):
    run_id = STATE["run"]
    # generations: 2 on a DAG built for 3: generation 3 is skipped, shown as skipped rather than failed.
    for task_id in ("gen_03.round_0.evaluate", "gen_03.round_0.select", "gen_01.round_1.evaluate", "gen_01.round_1.select"):
        assert _tooltip_state(page, run_id, task_id) == "Skipped", task_id
    assert _tooltip_state(page, run_id, "gen_01.round_0.select") == "Success"
    page.mouse.move(0, 0)

    page.goto(f"{stack.url}/dags/{DAG}/runs/{urllib.parse.quote(run_id, safe='')}/tasks/gen_01.round_0.evaluate/mapped")
    page.get_by_text("candidate 0 shard 0", exact=True).wait_for()
    # Three offspring, two shards each: one mapped instance per (candidate, shard), labelled so.
    for c in range(3):
        for s in range(2):
            assert page.get_by_text(f"candidate {c} shard {s}", exact=True).count() == 1
    _shot(page, "airflow-mapped-evaluate")


def test_a_run_failed_by_bad_data_shows_the_input_error_in_one_line_of_its_log(stack, page):
    bad = stack.root / "bad_dev.csv"
    bad.write_text("text,label\nthe food was fine,positive\nthe food was odd,sideways\n")
    conf = {**stack.conf, "generations": 1, "data": {**stack.conf["data"], "dev": [str(bad)]}}
    run = stack.api.call("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf})
    assert _wait_for_run(stack, run["dag_run_id"]) == "failed"
    quoted = urllib.parse.quote(run["dag_run_id"], safe="")
    failed = [t for t in stack.api.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{quoted}/taskInstances?limit=200")["task_instances"] if t["state"] == "failed"]
    assert [t["task_id"] for t in failed] in (["download_models"], ["init_population"])
    page.goto(f"{stack.url}/dags/{DAG}/runs/{quoted}/tasks/{failed[0]['task_id']}")
    line = page.get_by_text(re.compile(r"AirflowFailException: .*sideways")).first
    line.wait_for()
    assert "\n" not in line.inner_text().strip()
    _shot(page, "airflow-failed-log")


# -- MLflow -------------------------------------------------------------------------------------------------


def _mlflow_run(stack):
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow)
    experiment = client.get_experiment_by_name(EvolverConfig.model_fields["experiment"].default)
    runs = client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{STATE['run']}'")
    [run] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # its offspring runs carry the tag too
    return client, experiment, run


def test_mlflow_lists_the_run_and_its_child_runs(stack, page):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    client, experiment, run = _mlflow_run(stack)
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(children) == 6  # 3 offspring in each of 2 generations
    page.goto(f"{stack.mlflow}/#/experiments/{experiment.experiment_id}/runs")
    page.get_by_text(run.info.run_name).first.wait_for()
    try:  # MLflow's assistant panel opens by default and covers a third of every screen
        page.get_by_text("MLflow Assistant").first.wait_for(timeout=5000)
        page.locator("button[aria-label=Close]").first.click()
    except PlaywrightTimeout:
        pass
    page.locator("button[data-component-id*=runnamecellrenderer]").first.click()  # the parent row's [+]
    for child in children:
        page.get_by_text(child.info.run_name).first.wait_for()
    _shot(page, "mlflow-runs")


def test_mlflow_run_page_shows_description_params_fitness_curve_and_lineage(stack, page):
    client, experiment, run = _mlflow_run(stack)
    base = f"{stack.mlflow}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    page.goto(base)
    description = run.data.tags["mlflow.note.content"]
    shown_description = page.get_by_text(re.compile(re.escape("at generation 0,"))).first
    shown_description.wait_for()
    assert "Registry:" in page.locator("body").inner_text() and len([line for line in description.splitlines() if line]) <= 5
    page.get_by_text("Parameters", exact=False).first.wait_for()
    shown = page.locator("body").inner_text()
    for param, value in (("F", "0.3"), ("generations", "2"), ("merger", "average")):
        assert run.data.params[param] == value and re.search(rf"\n{param}\s*\n\s*{value}\s*\n", shown), param
    shown_description.scroll_into_view_if_needed()
    _shot(page, "mlflow-run")

    page.goto(f"{base}/model-metrics")
    page.get_by_text(re.compile(r"\(best_fitness\)")).first.wait_for()  # the chart's legend: drawn, not loading
    assert [m.step for m in client.get_metric_history(run.info.run_id, "best_fitness")] == [0, 1, 2]
    _shot(page, "mlflow-best-fitness")

    page.goto(f"{base}/artifacts")
    page.get_by_text("fitness_curve.png", exact=True).click()
    page.locator("img[src^='blob:']").first.wait_for()  # the PNG, fetched and previewed
    _shot(page, "mlflow-fitness-curve")
    page.get_by_text("lineage.json", exact=True).click()
    # lineage.json is an MLflow table: previewed with its columns, one row per evaluated offspring.
    for column in ("generation", "individual", "reference", "fitness", "accepted"):
        page.get_by_text(column, exact=True).first.wait_for()
    _shot(page, "mlflow-lineage")


def test_the_registered_model_page_shows_challenger_and_champion(stack, page):
    page.goto(f"{stack.mlflow}/#/models/{stack.conf['registered_model']}")
    page.get_by_text("@ challenger").first.wait_for()
    page.get_by_text("@ champion").first.wait_for()
    _shot(page, "mlflow-registry")
