# `make demo`, `make serve` and `make test` set themselves up: they create .venv and install palette when missing.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo serve test train-default

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[test,ui]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/palette demo

# The browser UI on http://127.0.0.1:7860 with the shipped model (this machine only; Ctrl-C stops it).
serve: $(INSTALLED)
	$(VENV)/bin/palette serve

test: $(INSTALLED)
	$(PYTHON) -m pytest -q

# Training of the shipped default model, in resumable chunks at low priority (MODEL_CARD.md). A chunk is a branch
# from the committed shipped weights (configs/default-cpu.yaml: 4000 steps ending in a cool-down); stop it at any
# moment (Ctrl-C, kill) and run it again to continue from the last checkpoint (every 250 steps, a few minutes). After
# a chunk, soup it with the shipped weights, validate, and commit the soup if it passes more of the bars; then move
# runs/default aside (never deleted) so that the next call starts the next chunk from the new weights:
#   palette export --checkpoint runs/default --checkpoint $(SHIPPED) --out soup.safetensors
# A chunk from the same weights repeats the last one exactly: give the next another seed (make train-default SEED=9).
SHIPPED := src/palette/assets/palette-multitask-64.safetensors
SEED ?= 8
train-default: $(INSTALLED)
	test -f data/wallpapers/train.txt || $(VENV)/bin/palette data wallpapers --out data/wallpapers
	if [ -f runs/default/checkpoints/latest ]; then \
	  nice -n 19 $(VENV)/bin/palette train --resume runs/default; \
	else \
	  nice -n 19 $(VENV)/bin/palette train --config configs/default-cpu.yaml --run-dir runs/default \
	    --set train.init_from=$(SHIPPED) --set train.seed=$(SEED); \
	fi
