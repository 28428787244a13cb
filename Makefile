# kmn-study — the two commands of the README are `make study` and `make test`.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= mini
STAMP   := $(VENV)/.installed-stamp

.PHONY: study test setup data baseline clean-results

# Create the virtual environment once, reinstall when the dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(PY) -m kmnlib.read_backends.native
	@touch $(STAMP)

setup: $(STAMP)

data: setup
	$(PY) -m kmnlib.setup_data

baseline: data
	$(PY) -m kmnlib.baselines

# The main job: the whole CPU study (profile $(PROFILE)) executed notebook by notebook.
study: data baseline
	$(PY) -m kmnlib.study --profile $(PROFILE) $(STUDY_ARGS)

test: data
	$(PY) -m pytest $(PYTEST_ARGS)

# Step through the study: JupyterLab on notebooks/, kernel "python3" = this venv's python (kmnlib
# importable). A notebook run top to bottom there writes what `make study` writes (docs/JUPYTERLAB.md).
# Extra server options: make lab LAB_ARGS="--no-browser --port 8899". As root (containers) the
# server needs --allow-root, added here.
.PHONY: lab
lab: data
	JUPYTER_PREFER_ENV_PATH=1 $(PY) -m jupyter lab --notebook-dir=notebooks \
	    $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)
