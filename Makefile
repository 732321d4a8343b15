# Everything runs from a project-local virtualenv that the first target creates.
# torch is pinned in constraints.txt, used by every install step (PyPI's build, CUDA-enabled,
# runs on CPU); the package itself only asks for a range.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install kube kube-peers demo test test-fast lint format typecheck bench bench-gpu crd chart images e2e-kind clean \
	axolotl compat-axolotl

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[runtime,operator,tracking,dev]'
	touch $(STAMP)

install: $(STAMP)

## axolotl itself, pinned, in a venv of its own (~7 GB, never mixed into ours): what the
## side-by-side comparisons run against. Torch comes from constraints.txt, everything else
## from bench/vs_axolotl/constraints.txt (the versions resolved when the pin was set).
AXOLOTL_VERSION := 0.19.0
AXOLOTL_VENV ?= .cache/axolotl-venv
AXOLOTL_STAMP := $(AXOLOTL_VENV)/.installed
AXOLOTL_CONSTRAINTS := bench/vs_axolotl/constraints.txt

$(AXOLOTL_STAMP): constraints.txt $(AXOLOTL_CONSTRAINTS)
	$(PYTHON) -m venv $(AXOLOTL_VENV)
	$(AXOLOTL_VENV)/bin/python -m pip install --quiet --upgrade pip
	nice $(AXOLOTL_VENV)/bin/python -m pip install --quiet -c constraints.txt \
		-c $(AXOLOTL_CONSTRAINTS) axolotl==$(AXOLOTL_VERSION)
	touch $(AXOLOTL_STAMP)

axolotl: $(AXOLOTL_STAMP)

## Token-exact data, loss curves and config coverage against axolotl (tests/compat). Here a
## missing axolotl venv or a skipped comparison is a failure; `make test` skips them instead.
compat-axolotl: $(STAMP) $(AXOLOTL_STAMP)
	FINETUNE_REQUIRE_AXOLOTL=1 AXOLOTL_VENV=$(AXOLOTL_VENV) $(PY) -m pytest tests/compat $(PYTEST_ARGS)

## The test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok),
## built from the Go modules pinned under kube/ into .cache/kube/<version>/, and Kueue (pinned in
## kube/addons/kueue/, into .cache/kube/kueue/<version>/, with its CRDs and webhook manifests from
## the module source); each a no-op until its pin changes. Needs Go 1.26+.
kube:
	./scripts/build-kube.sh
	./scripts/build-kueue.sh

## The peer controllers the operator bench runs beside ours (Kubeflow training-operator), built
## from the Go modules pinned under kube/peers/ into .cache/kube/peers/. Only `make bench` needs it.
kube-peers:
	./scripts/build-kube-peers.sh

## The main job: fine-tune a locally built tiny Llama with LoRA, merge, generate.
demo: $(STAMP)
	$(VENV)/bin/finetune run

## The whole test suite (unit, real training, the operator on a real control plane, S3, helm).
test: $(STAMP) kube
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) kube
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

## ruff, and the import layers (pyproject.toml [tool.importlinter], docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check runtime operator tests bench
	$(VENV)/bin/ruff format --check runtime operator tests bench
	$(VENV)/bin/lint-imports --no-cache --no-logo

format: $(STAMP)
	$(VENV)/bin/ruff format runtime operator tests bench
	$(VENV)/bin/ruff check --fix runtime operator tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy runtime/finetune_runtime operator/finetune_operator

## Regenerate the CRD from the runtime config schema (a test fails on drift).
crd: $(STAMP)
	$(PY) -m finetune_operator.crd > crds/finetunejob.yaml
	cp crds/finetunejob.yaml charts/finetune-operator/crds/finetunejob.yaml

## Copy the generated CRD into the chart (a test fails when they differ), regenerate the values
## table in the chart's README, and lint the chart with the helm binary that the dev extra ships.
chart: $(STAMP)
	cp crds/finetunejob.yaml charts/finetune-operator/crds/finetunejob.yaml
	$(PY) scripts/chart_values_table.py
	"$$($(PY) tests/helm_binary.py helm)" lint --strict charts/finetune-operator

## Build the operator and runtime images (needs Docker; IMAGE_TAG=dev by default).
IMAGE_TAG ?= dev
images:
	docker build -f images/operator/Dockerfile -t finetune-operator:$(IMAGE_TAG) .
	docker build -f images/runtime/Dockerfile -t finetune-runtime:$(IMAGE_TAG) .

bench: $(STAMP) kube kube-peers $(AXOLOTL_STAMP)
	AXOLOTL_VENV=$(AXOLOTL_VENV) $(PY) -m bench.run

bench-gpu: $(STAMP)
	PYTHON=$(PY) bench/gpu.sh

e2e-kind:
	./scripts/e2e-kind.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache outputs
