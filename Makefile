# The course's entry points. `make course` and `make test` are the README's two commands;
# both set up everything they need from this repository's own files.
#
#   make course   set up, start the broker, run every notebook headless into output/
#   make test     set up, start the broker, run lint, the tests and the notebook checks
#   make bench    every stage's speed, latency and memory in one run (see README)
#   make student  the student copy of the notebooks, without solutions

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BANKCOURSE := $(PY) -m bankcourse
OUT ?= output
PYTEST_ARGS ?=
# Headless runs draw each dashboard once, at the end, instead of live.
export BANKCOURSE_HEADLESS ?= 1

.PHONY: setup system-deps prefetch course test lint bench student broker-start broker-stop clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (bankcourse)"
	touch $@

# Java and kcat come from the system: installed with apt-get when we are root and they are
# missing, otherwise the doctor says what to install.
system-deps:
	@sh scripts/system-deps.sh

setup: system-deps $(VENV)/.installed

# Kafka's jars and Spark's Kafka connector, fetched once from Maven Central and cached.
prefetch: setup
	$(BANKCOURSE) broker fetch
	$(BANKCOURSE) spark prefetch

course: prefetch
	$(BANKCOURSE) doctor || true
	$(BANKCOURSE) broker start
	mkdir -p $(OUT)/notebooks
	status=0; \
	for nb in notebooks/[0-9]*.ipynb; do \
	  $(PY) -m papermill --cwd notebooks "$$nb" "$(OUT)/notebooks/$$(basename $$nb)" \
	    || { status=$$?; break; }; \
	done; \
	$(BANKCOURSE) broker stop; \
	[ $$status -eq 0 ] && echo "The course ran end to end: executed notebooks are in $(OUT)/notebooks"; \
	exit $$status

lint: setup
	$(VENV)/bin/ruff check .

test: prefetch lint
	$(BANKCOURSE) broker start
	status=0; \
	$(PY) -m pytest tests notebooks --nbval-lax $(PYTEST_ARGS) || status=$$?; \
	$(BANKCOURSE) broker stop; \
	exit $$status

bench: prefetch
	$(BANKCOURSE) bench --out $(OUT)/bench

student: setup
	$(BANKCOURSE) student --out $(OUT)/student

broker-start: setup
	$(BANKCOURSE) broker start

broker-stop: setup
	$(BANKCOURSE) broker stop

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache .hypothesis

# Rehearse a mybinder.org build and launch without Docker: a clean environment from
# binder/environment.yml, binder/postBuild and binder/start as a user who is not root,
# notebooks run through the broker start launched (ports 59092/59093). A few minutes.
.PHONY: binder-check
binder-check: system-deps
	bash binder/ci-check.sh
