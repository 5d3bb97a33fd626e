# The two commands the README promises, plus the usual checks.
.PHONY: demo test test-fast check bench venv

venv:
	@scripts/bootstrap.sh

demo: venv
	.venv/bin/tandem demo

# Everything CPU-only and offline, slow (model / Ray) tests included; GPU tests are opt-in.
test: venv
	scripts/test.sh

test-fast: venv
	.venv/bin/python -m pytest -m "not slow and not gpu and not vllm"

check: venv
	.venv/bin/ruff format --check shared gpu_worker cpu_scorer tandem tests bench
	.venv/bin/ruff check shared gpu_worker cpu_scorer tandem tests bench
