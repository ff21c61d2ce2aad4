#!/usr/bin/env bash
# Build .venv-flyte: a virtualenv with lorafleet's `flyte` extra (flytekitplugins-inference
# and the flytekit it needs) for tests/flyte. It is separate from .venv because flytekit's
# storage stack (s3fs -> aiobotocore) pins a botocore that the test extra's boto3 (moto)
# cannot use. lorafleet.flyte needs only that extra: the tests run it from the working tree.
#
# Usage: scripts/install_flyte.sh [VENV_DIR]   (default .venv-flyte)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-flyte}"

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
mapfile -t requirements < <(python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['flyte']))")
"$VENV/bin/pip" install -q "${requirements[@]}"
"$VENV/bin/python" -c "import flytekitplugins.inference.nim.serve as s, importlib.metadata as m; print('install_flyte: flytekitplugins-inference', m.version('flytekitplugins-inference'), 'ready in $VENV')"
