# The README's commands. `make book` and `make test` each set up .venv first (once).
#   make book        execute every chapter and build the HTML into _build/html
#   make test        lint, then the whole test suite (course_lib, the book, the exercises)
#   make test-fast   the suite without the tests marked slow (book, grader, pipeline)
#   make fuzz        the property tests with random exploration (CI runs them derandomized)
#   make setup       only create .venv and install (torch first, then the course, then
#                    bubblewrap for the grading sandbox and chromium for the browser tests
#                    where it may: root with apt-get)
#   make publish     the site to publish: the chapters as notebooks (make notebooks) for the
#                    launch buttons, then make book; CI deploys _build/html to GitHub Pages
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
BROWSER_STAMP := $(VENV)/.browser
# nbgrader runs `alembic` and `jupyter` by name: the targets that run it see .venv/bin first.
VENV_PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
BOOK_CACHE := _build/.jupyter_cache
BOOK_HASH := _build/.course_lib.sha256

.PHONY: setup book test test-fast fuzz lint format clean bench exercises grade formgrader \
        notebooks publish

setup: $(STAMP) $(SANDBOX_STAMP) $(BROWSER_STAMP)

# Reinstalls when pyproject.toml changes; torch is installed only when it is missing, so a
# CUDA build installed by hand (see README) is kept.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

# A Debian package the tests need, installed once where we may (root with apt-get): otherwise
# the one command that would, and the tests that need it are skipped with that reason.
# $(call apt_once,WHAT,COMMAND,PACKAGE)
define apt_once
	@if command -v $(2) >/dev/null 2>&1; then \
	    echo "$(1): $(3) is installed ($$(command -v $(2)))"; touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "$(1): installing $(3) with apt-get (once)"; \
	    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(3)) >/dev/null 2>&1; then \
	        echo "$(1): $(3) installed"; touch $@; \
	    else echo "$(1): apt-get could not install $(3); run: sudo apt-get install $(3)"; fi; \
	else \
	    echo "$(1): $(3) is missing; install it with: sudo apt-get install $(3)"; \
	fi
endef

# The grading sandbox (make grade, and the grader's tests) needs bubblewrap; the test run's
# last lines say how many sandbox tests were skipped without it.
$(SANDBOX_STAMP): | $(STAMP)
	$(call apt_once,grading sandbox,bwrap,bubblewrap)

# The browser tests (tests/test_browser.py) read the built book in Debian's Chromium, driven
# by Playwright (installed with the course) through its executable path: nothing downloads a
# browser.
$(BROWSER_STAMP): | $(STAMP)
	$(call apt_once,browser tests,chromium,chromium)

# jupyter-cache re-executes a chapter when its code changes, but cannot see course_lib or the
# recorded benchmark results the Memory chapter reads: empty the cache whenever any of them
# (or the config) changed since the last successful build, so the book never shows stale results.
book: setup
	@mkdir -p _build
	@new=$$(find course_lib benchmarks/results _config.yml pyproject.toml -type f \( -name '*.py' -o -name '*.js' -o -name '*.json' -o -name '*.yml' -o -name '*.toml' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); \
	 old=$$(cat $(BOOK_HASH) 2>/dev/null); \
	 if [ "$$new" != "$$old" ]; then echo "course_lib changed: clearing the execution cache"; rm -rf $(BOOK_CACHE); fi; \
	 COURSE_PROGRESS=0 $(VENV)/bin/jupyter-book build . -W --keep-going && echo "$$new" > $(BOOK_HASH)
	@$(PY) -m benchmarks.book_times --cache $(BOOK_CACHE)
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

# The GPU check (benchmarks/gpu_check.py): first the CPU-side preparation (the Memory chapter
# converted by jupytext into benchmarks/gpu_check_memory.py, kept when jupytext is missing),
# then the check. With a CUDA device: the CUDA tests, the AdamW step at 1B parameters, the
# 8-bit step and the chapter at COURSE_SCALE=full, within 8 minutes, results in
# benchmarks/results/gpu_check_<gpu>.json. Without one it lists what it would run and exits
# 0 (CI runs that). Needs only torch, numpy, matplotlib, pytest and tqdm on the GPU machine,
# and uses .venv when there is one, else $(PYTHON).
.PHONY: gpu-check
GPU_CHECK_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_CHECK_PY) -m benchmarks.gpu_check --prepare
	$(GPU_CHECK_PY) -m benchmarks.gpu_check

# Student code is untrusted: course-grade refuses to run without a bubblewrap sandbox.
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

# The chapters as Jupyter notebooks, book/<chapter>.ipynb beside each .md (generated, not
# committed; Sphinx ignores them). With them present the book's launch buttons open the
# .ipynb, which Colab needs; CI publishes them with the course on the branch that
# _config.yml's `repository: branch:` names. Each notebook starts with a code cell that
# makes course_lib importable on a hosted Jupyter (it clones `repository: url:`).
define NOTEBOOKS_PY
import pathlib
import jupytext
import nbformat
import yaml

config = yaml.safe_load(pathlib.Path("_config.yml").read_text())
toc = yaml.safe_load(pathlib.Path("_toc.yml").read_text())
setup = pathlib.Path("book/_static/notebook_setup.py").read_text()
setup = setup.replace("REPOSITORY_URL", config["repository"]["url"]).strip()
for name in [toc["root"]] + [chapter["file"] for chapter in toc.get("chapters", [])]:
    notebook = jupytext.read(f"{name}.md")
    if any(cell.cell_type == "code" for cell in notebook.cells):
        first = next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code")
        cell = nbformat.v4.new_code_cell(setup, metadata={"tags": ["remove-cell"]})
        notebook.cells.insert(first, cell)
    jupytext.write(notebook, f"{name}.ipynb")
    print(f"wrote {name}.ipynb")
endef
export NOTEBOOKS_PY

notebooks: $(STAMP)
	$(PY) -c "$$NOTEBOOKS_PY"

# What CI deploys: the notebooks first (so that the launch buttons open them), then the
# book, executed at COURSE_SCALE (small unless set). Serve _build/html as a static site.
publish: notebooks
	$(MAKE) book
	@touch _build/html/.nojekyll
	@echo "Ready to publish: _build/html (CI: .github/workflows/book.yml deploys it to GitHub Pages)"

clean:
	rm -rf _build
