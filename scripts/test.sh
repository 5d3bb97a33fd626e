#!/usr/bin/env bash
# The test command behind `make test` and .ci/run: CPU-only, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
# Build the embedded model cache once, outside any test's timing.
.venv/bin/python -c "from gpu_worker.models import embedded_model_dir; embedded_model_dir()" 2>/dev/null
exec .venv/bin/python -m pytest -m "not gpu and not vllm" -p no:cacheprovider "$@"
