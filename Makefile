# hpcdesk developer entry points (run as root on a Debian 12/13 machine; see README.md).
VENV ?= /opt/hpcdesk/venv
export HPCDESK_VENV := $(VENV)
DEV_USER ?= hpcuser

.PHONY: setup setup-base setup-runtime cluster-up cluster-down demo demo-container test test-unit lint docs bench bench-scale

## Everything the tests need, pyslurm included (built once per Slurm release; minutes).
setup:
	bash scripts/setup.sh

## Packages, the venv with the test and docs tools, and hpcdesk, without pyslurm: what lint,
## the unit tests and the docs build need.
setup-base:
	bash scripts/setup.sh --no-pyslurm

## Packages, the venv with hpcdesk's runtime pins only (requirements/runtime.txt), and hpcdesk:
## what the dev cluster and the demo run. A venv made by `make setup` already serves.
setup-runtime:
	bash scripts/setup.sh --no-pyslurm --runtime-only

cluster-up: setup-runtime
	bash tests/cluster/devcluster.sh up

cluster-down:
	bash tests/cluster/devcluster.sh down

## Bring up the dev cluster and launch one desktop; prints a URL that opens in a browser here.
demo: cluster-up
	runuser -u $(DEV_USER) -- env HOME=/home/$(DEV_USER) PATH=$(VENV)/bin:/usr/bin:/bin \
		$(VENV)/bin/hpcdesk submit --site devcluster

## The same with a container: hpcdesk's KDE Plasma image (FLAVOR=debian: the lighter Xfce one)
## built here offline (cached by content; docs/images.md), started under Apptainer as the user.
FLAVOR ?= kde
demo-container: cluster-up
	bash tests/cluster/apptainer-setup.sh
	$(VENV)/bin/hpcdesk image build --flavor $(FLAVOR) --site devcluster
	runuser -u $(DEV_USER) -- env HOME=/home/$(DEV_USER) PATH=$(VENV)/bin:/usr/local/bin:/usr/bin:/bin \
		$(VENV)/bin/hpcdesk submit --site devcluster --runtime apptainer --image $(FLAVOR)

lint: setup-base
	$(VENV)/bin/ruff check hpcdesk harness tests benchmarks
	$(VENV)/bin/mypy hpcdesk

test-unit: setup-base
	$(VENV)/bin/python -m pytest tests/unit

## The documentation site (docs/, mkdocs.yml), built strictly: a broken link or a page left
## out fails. tests/unit/test_docs.py runs the same build inside `make test`.
docs: setup-base
	$(VENV)/bin/mkdocs build --strict --site-dir /tmp/hpcdesk-site

## Every test: lint, unit tests, then the real-cluster, browser and container tests.
## HPCDESK_TEST_STRICT: a missing tool fails its test, and any skip but a missing GPU fails the
## run (tests/tooling.py).
test: setup lint cluster-up
	HPCDESK_TEST_STRICT=1 $(VENV)/bin/python -m pytest -rs tests; status=$$?; \
	$(VENV)/bin/python scripts/update-docs-reliability.py; exit $$status

bench: cluster-up
	$(VENV)/bin/python -m benchmarks.run
	$(VENV)/bin/python -m benchmarks.scale $(if $(SHORT),--short)

## Cost at scale (docs/performance.md "Scale"): a busy queue, many sessions, many waiting
## submits, idle desktops per node. SHORT=1 keeps it short.
bench-scale: cluster-up
	$(VENV)/bin/python -m benchmarks.scale $(if $(SHORT),--short)
