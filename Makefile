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

# Training of the shipped default model, in resumable chunks at low priority (MODEL_CARD.md). The first chunk of a
# fresh clone starts from the committed trunk (training/default-trunk.safetensors: the EMA weights of the
# constant-lr run the shipped model is a cool-down branch of); stop it at any moment (Ctrl-C, kill) and run it again
# to continue from the last checkpoint (every 250 steps, a few minutes). After a chunk, export the run over the trunk
# and commit it; to ship, branch a cool-down off it as MODEL_CARD.md ("Reproducing it") says:
#   palette export --checkpoint runs/default --out training/default-trunk.safetensors
train-default: $(INSTALLED)
	test -f data/wallpapers/train.txt || $(VENV)/bin/palette data wallpapers --out data/wallpapers
	if [ -f runs/default/checkpoints/latest ]; then \
	  nice -n 19 $(VENV)/bin/palette train --resume runs/default; \
	else \
	  nice -n 19 $(VENV)/bin/palette train --config configs/default-cpu.yaml --run-dir runs/default \
	    --set train.init_from=training/default-trunk.safetensors; \
	fi
