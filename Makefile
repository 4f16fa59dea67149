# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Default budget of `make run`: a few minutes on 2 CPU cores.
DATASET     ?= mnist-5k
# Empty: the CLI's default strategy (nasflow.search.settings.DEFAULT_STRATEGY).
STRATEGY    ?=
MAX_TRIALS  ?= 20
EPOCHS      ?= 3
TRAIN_EPOCHS ?= 10
SEED        ?= 42
VARIANTS    ?= float16 int8 dynamic structured_prune+int8

.PHONY: venv system-deps run test test-slow test-podman test-containers lint compile image image-gpu clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Graphviz draws the architecture diagrams (pydot is a Python dependency); installed with apt
# when root and missing, else a one-line warning: runs keep DOT text, without PNG diagrams.
system-deps:
	@scripts/ensure_debian_packages.sh dot:graphviz

run: $(STAMP) system-deps
	$(BIN)/nasflow run --dataset $(DATASET) $(if $(STRATEGY),--strategy $(STRATEGY)) --max-trials $(MAX_TRIALS) \
		--epochs $(EPOCHS) --train-epochs $(TRAIN_EPOCHS) --seed $(SEED) --compression-variants $(VARIANTS)

# checkov cannot share a venv with our pins (it needs packaging<24, pytest 9 needs >=24),
# so the security scan of the manifests gets a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

$(CHECKOV):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==3.3.30

# Two tiers. `make test` runs every test not marked `slow` (under 10 minutes on 2 cores);
# `make test-containers` runs the slow real-infrastructure checks (kill matrices, outage,
# retried and real-server pipeline runs, PostgreSQL, the browser), then the podman tier.
test: $(STAMP) $(CHECKOV) system-deps
	NASFLOW_CHECKOV=$(CURDIR)/$(CHECKOV) $(BIN)/python -m pytest -m 'not slow' -n 2 --dist loadfile

# The slow real-infrastructure tests alone (the first half of `make test-containers`).
test-slow: $(STAMP) system-deps
	$(BIN)/python -m pytest -m slow -n 2 --dist loadfile

# The container tier: builds docker/Dockerfile (+ .gpu) unchanged with podman as $(IMAGE) /
# $(IMAGE_GPU), the tags `make image` gives, and runs tests/containers in and against them.
test-podman: $(STAMP)
	IMAGE='$(IMAGE)' IMAGE_GPU='$(IMAGE_GPU)' PYTHON='$(BIN)/python' tests/containers/tier.sh

test-containers: test-slow test-podman

lint: $(STAMP)
	$(BIN)/ruff check nasflow components pipelines tests bench

compile: $(STAMP)
	$(BIN)/nasflow compile

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# --- Container images (docker/). The tag is nasflow.config.image_reference(): the package
# version, under NASFLOW_IMAGE_REGISTRY (default docker.io/nasflow), e.g.
#   NASFLOW_IMAGE_REGISTRY=ghcr.io/acme make image push
# Compile pipelines with the same NASFLOW_IMAGE_REGISTRY so their steps name this image.
IMAGE     = $(shell NASFLOW_IMAGE_REGISTRY='$(NASFLOW_IMAGE_REGISTRY)' $(BIN)/python -c 'from nasflow.config import image_reference; print(image_reference())')
IMAGE_GPU = $(shell NASFLOW_IMAGE_REGISTRY='$(NASFLOW_IMAGE_REGISTRY)' $(BIN)/python -c 'from nasflow.config import image_reference; print(image_reference(gpu=True))')
DOCKER   ?= docker

.PHONY: push push-gpu

image: $(STAMP)
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE) .

image-gpu: $(STAMP)
	$(DOCKER) build -f docker/Dockerfile.gpu -t $(IMAGE_GPU) .

push: image
	$(DOCKER) push $(IMAGE)

push-gpu: image-gpu
	$(DOCKER) push $(IMAGE_GPU)
