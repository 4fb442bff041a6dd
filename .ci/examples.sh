#!/usr/bin/env bash
# The examples cannot rot: lint and type-check them, run the downstream project's own
# tests (cira_db.testing plugin), the examples' tests in tests/, and lint the SAM template.
# Called from .ci/run after `make test` (which creates .venv and has run the examples' tests in
# tests/: .ci/run sets CIRA_DB_CI_SUITE_RAN=1 so they are not run twice).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/.venv/bin"

echo "== examples: ruff and mypy --strict"
"$bin/ruff" check examples
"$bin/ruff" format --check examples
"$bin/mypy" --strict examples/lambda/app/app.py
"$bin/mypy" --strict examples/worker/worker.py
"$bin/mypy" --strict examples/fastapi/app.py
(cd examples/downstream && MYPYPATH=src "$bin/mypy" --strict src tests)

echo "== examples/downstream: its own tests, with pytest_plugins = [\"cira_db.testing\"]"
(cd examples/downstream && "$bin/python" -m pytest -q)

echo "== examples: the Lambda handler, the worker, the layer running the handler"
if [ "${CIRA_DB_CI_SUITE_RAN:-0}" = 1 ]; then
    # .ci/run: the full suite, in this venv, ran these tests (and built the layer) just before
    echo "ci: tests/test_examples.py and tests/test_layer.py passed in the full suite of this run"
else
    "$bin/python" -m pytest -q tests/test_examples.py tests/test_layer.py
fi

echo "== examples/lambda/template.yaml"
if command -v cfn-lint >/dev/null; then
    # W3005: redundant DependsOn inside resources SAM itself generates for the usage plan.
    cfn-lint --ignore-checks W3005 -- examples/lambda/template.yaml
else
    echo "ci: cfn-lint is not installed; the SAM template was not linted"
fi
