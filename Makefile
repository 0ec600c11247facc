# The two commands a newcomer types: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torchvision's wheels import only beside the torch they were built for, and no torchvision build
# imports beside the CPU torch 2.13 of $(VENV). Kind "torchvision" is tested in a second venv with a
# pair that does (docs/models.md, "torch and torchvision").
VISION_VENV  ?= .venv-vision
VISION_BIN   := $(VISION_VENV)/bin
VISION_STAMP := $(VISION_VENV)/.installed
VISION_PAIR  := "torch==2.14.1" "torchvision==0.29.1"

.PHONY: install install-vision demo test lint validate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first: a bare requirement could pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.10,<2.15" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(VISION_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_BIN)/pip install -q --upgrade pip
	$(VISION_BIN)/pip install -q $(VISION_PAIR) || $(VISION_BIN)/pip install -q $(VISION_PAIR) --index-url https://download.pytorch.org/whl/cpu
	$(VISION_BIN)/pip install -q -e ".[dev,vision]"
	# The project's own requirements must not have swapped the pair for another torch.
	$(VISION_BIN)/python -c "import torch, torchvision.ops; assert torch.__version__.startswith('2.14.1'), torch.__version__; torchvision.ops.nms"
	touch $(VISION_STAMP)

install-vision: $(VISION_STAMP)

demo: $(STAMP)
	$(BIN)/lambdahat demo

# The main suite runs in $(VENV), where tests/vision skip (saying why); then tests/vision in $(VISION_VENV).
test: $(STAMP) $(VISION_STAMP)
	$(BIN)/python -m pytest
	$(VISION_BIN)/python -m pytest tests/vision

lint: $(STAMP)
	$(BIN)/ruff check .

validate: $(STAMP)
	$(BIN)/python bench/validate.py

bench: $(STAMP)
	$(BIN)/python bench/speed.py

clean:
	rm -rf $(VENV) $(VISION_VENV) .pytest_cache .ruff_cache *.egg-info
