# SafeAlign course. `make course` runs every notebook; `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= cpu
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup course exercises test test-fast lint format organism data bench strip clean regress baseline readme site

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (SafeAlign)" > /dev/null
	touch $(STAMP)

setup: $(STAMP)

## Execute every notebook (papermill, cwd notebooks/) into build/executed/, write build/metrics.json
course: setup
	$(BIN)/safealign course --profile $(PROFILE)

## Compare build/metrics.json with baselines/$(PROFILE).json (exit 1 when a metric moved)
regress: setup
	$(BIN)/safealign course regress --baseline baselines/$(PROFILE).json

## Rewrite baselines/$(PROFILE).json from build/metrics.json (after an intended change)
baseline: setup
	$(BIN)/safealign course regress --baseline baselines/$(PROFILE).json --update --profile $(PROFILE)

LINTED := safealign_lib tests bench experiments notebooks exercises
NOTEBOOKS := notebooks/[0-9][0-9]_*.ipynb exercises/[0-9][0-9]_*.ipynb

## Regenerate the workshop's exercise notebooks (exercises/) from the solution notebooks
exercises: setup
	$(BIN)/safealign course exercises

## Lint, format check, stripped notebooks, unit tests + every notebook in the smoke profile
test: lint
	$(BIN)/python -m pytest -q

## Unit tests only (no notebooks)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not notebook"

## ruff (lint + format check), notebooks stripped (nbstripout) and in the course's shape
lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/nbstripout --verify --keep-id $(NOTEBOOKS)
	$(BIN)/python -m safealign_lib.tooling.nbtools check $(NOTEBOOKS)

## Rebuild the data and the organism from the seed (overwrites data/splits and data/organism)
organism: setup
	$(BIN)/safealign organism build --force

data: setup
	$(BIN)/safealign data build --force

bench: setup
	$(BIN)/python bench/bench_course.py
	$(BIN)/python bench/bench_salora.py
	$(BIN)/python bench/bench_lowrank_scoring.py
	$(BIN)/python bench/bench_keep_safety.py

## Static HTML of the executed notebooks (after `make course`): build/site/index.html
site: setup
	$(BIN)/safealign course site

## Rewrite the README's results block from baselines/cpu.json (after `make baseline PROFILE=cpu`)
readme: setup
	$(BIN)/python -m safealign_lib.studies.synthesis --readme README.md --baseline baselines/cpu.json

## Strip outputs from the committed notebooks
strip: setup
	$(BIN)/nbstripout --keep-id $(NOTEBOOKS)

## Format the code and the notebooks
format: setup
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

clean:
	rm -rf build
