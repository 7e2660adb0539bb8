# The README's commands. Each installs what it needs on a fresh machine first.
#   make demo   the main job end to end on the embedded corpus (CPU, a few minutes)
#   make real-pair   the same pipeline on the shipped English-Spanish pair (data/real/en-es; CPU, <= 10 min)
#   make test   install and run the whole test suite (CI runs exactly this)
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-12)

.PHONY: demo real-pair test install lint clean-demo

$(STAMP):
	bash scripts/install.sh
	rm -f .venv/.installed-*; touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

real-pair: $(STAMP)
	bash scripts/real_pair_demo.sh

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15

lint: $(STAMP)
	.venv/bin/ruff check prealign_scale data_tools launchers tests benchmarks
	.venv/bin/hadolint Dockerfile

clean-demo:
	rm -rf runs/demo
