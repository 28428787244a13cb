# kmn-study — the two commands of the README are `make study` and `make test`.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= mini
STAMP   := $(VENV)/.installed-stamp

.PHONY: study test setup data baseline clean-results replicates

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

# The seed replicates the study pools (results/<profile>-seed<N>), two at a time with one torch
# thread each (a 2-core machine: ~50 min of CPU per seed), then seed 0 (results/<profile>), which
# pools them; a replicate made by other code or settings stops seed 0's effects with one line.
SEEDS ?= 1 2 3 4
replicates: data baseline
	printf '%s\n' $(SEEDS) | xargs -P 2 -I{} $(PY) -m kmnlib.study --profile $(PROFILE) --seed {} \
	    --out-dir results/$(PROFILE)-seed{} --threads 1 \
	    --params-json '{"train_workers": 1, "eval_workers": 1}'
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
