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
