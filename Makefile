# The README's commands. `make book` and `make test` each set up .venv first (once).
#   make book        execute every chapter and build the HTML into _build/html
#   make test        lint, then the whole test suite (course_lib, the book, the exercises)
#   make test-fast   the suite without the tests marked slow (book, grader, pipeline)
#   make fuzz        the property tests with random exploration (CI runs them derandomized)
#   make setup       only create .venv and install (torch first, then the course, then
#                    bubblewrap for the grading sandbox where it may: root with apt-get)
#   make lint        ruff check + ruff format --check
#   make format      ruff format + ruff check --fix
#   make exercises   regenerate exercises/ from solutions/ with nbgrader
#   make bench       run the benchmarks (about 10 min); results go to benchmarks/results/*.json
#   make grade ASSIGNMENT=adamw [WORKERS=4] [GRADE_ARGS="--force"]
#                    grade autograder/submitted/*/ASSIGNMENT in the sandbox (course-grade)
#   make formgrader  start Jupyter in autograder/ for nbgrader's formgrader (/formgrader)
#   make clean       remove _build (keeps .venv)
#
# Variables: PYTHON (the interpreter that creates .venv, default python3),
# TORCH_SPEC (what pip installs for torch, default torch==2.13.0).

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SANDBOX_STAMP := $(VENV)/.sandbox
# nbgrader runs `alembic` and `jupyter` by name: the targets that run it see .venv/bin first.
VENV_PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
BOOK_CACHE := _build/.jupyter_cache
BOOK_HASH := _build/.course_lib.sha256

.PHONY: setup book test test-fast fuzz lint format clean bench exercises grade formgrader

setup: $(STAMP) $(SANDBOX_STAMP)

# Reinstalls when pyproject.toml changes; torch is installed only when it is missing, so a
# CUDA build installed by hand (see README) is kept.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

# The grading sandbox (make grade, and the grader's tests) needs bubblewrap. Installed once,
# where we may (root with apt-get); otherwise the one command that would, and the sandbox
# tests are skipped with that reason (the test run's last lines say how many).
$(SANDBOX_STAMP): | $(STAMP)
	@if command -v bwrap >/dev/null 2>&1; then \
	    echo "grading sandbox: bubblewrap is installed ($$(command -v bwrap))"; touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "grading sandbox: installing bubblewrap with apt-get (once)"; \
	    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null 2>&1; then \
	        echo "grading sandbox: bubblewrap installed"; touch $@; \
	    else echo "grading sandbox: apt-get could not install bubblewrap; run: sudo apt-get install bubblewrap"; fi; \
	else \
	    echo "grading sandbox: bubblewrap is missing; install it with: sudo apt-get install bubblewrap"; \
	fi

# jupyter-cache re-executes a chapter when its code changes, but cannot see course_lib:
# empty the cache whenever any file under course_lib/ (or the config) changed since the
# last successful build, so the book never shows stale results.
book: setup
	@mkdir -p _build
	@new=$$(find course_lib _config.yml pyproject.toml -type f \( -name '*.py' -o -name '*.js' -o -name '*.yml' -o -name '*.toml' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); \
	 old=$$(cat $(BOOK_HASH) 2>/dev/null); \
	 if [ "$$new" != "$$old" ]; then echo "course_lib changed: clearing the execution cache"; rm -rf $(BOOK_CACHE); fi; \
	 COURSE_PROGRESS=0 $(VENV)/bin/jupyter-book build . -W --keep-going && echo "$$new" > $(BOOK_HASH)
	@echo "Open _build/html/index.html"

test: setup lint
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# The fast tests with hypothesis exploring at random (new examples every run, saved in
# .hypothesis/ when they fail); `make test` and CI run the fixed, derandomized profile.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

exercises: export PATH := $(VENV_PATH)
exercises: setup
	$(PY) autograder/make_exercises.py

bench: $(STAMP)
	$(PY) -m benchmarks.adamw_step
	$(PY) -m benchmarks.adamw8bit
	$(PY) -m benchmarks.grading

# Student code is untrusted: grade.py refuses to run without a bubblewrap sandbox.
# Install it here when it is missing and we may (root with apt-get).
grade: export PATH := $(VENV_PATH)
grade: setup
	@test -n "$(ASSIGNMENT)" || { echo "usage: make grade ASSIGNMENT=<name> [WORKERS=N] [GRADE_ARGS=...]"; exit 2; }
	$(PY) -m autograder.grade $(ASSIGNMENT) $(if $(WORKERS),--workers $(WORKERS)) $(GRADE_ARGS)

# nbgrader's formgrader is a Jupyter server extension: it lives at /formgrader of a Jupyter
# server started in autograder/ (where nbgrader_config.py is). Root needs --allow-root.
formgrader: export PATH := $(VENV_PATH)
formgrader: setup
	cd autograder && ../$(VENV)/bin/jupyter lab --no-browser $(if $(filter 0,$(shell id -u)),--allow-root) \
	    --ServerApp.default_url=/formgrader $(JUPYTER_ARGS)

clean:
	rm -rf _build
