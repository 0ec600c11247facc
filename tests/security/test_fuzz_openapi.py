"""Property-based fuzzing of the whole API with schemathesis, from the app's own OpenAPI schema, on
SQLite and PostgreSQL, authenticated with a valid key (so requests get past 401 into the handlers).

Checks: no 5xx for any generated request (valid or not), and every response whose status the schema
documents matches the documented response schema. A checkpoint, a dataset and a job exist, so the
``{id}`` paths reach real rows when the generator happens to use them and 404 otherwise.
Bounded: ``MAX_EXAMPLES`` examples per operation, derandomized (the same requests on every run).

(Hypothesis is driven directly rather than through schemathesis' pytest plugin, whose lazy fixture
support does not work with the pytest version used here.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.helpers import create_key, running_app, service_settings  # noqa: F401 (fixture)
from tests.jobs.seed import seed_artifacts

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40
CHECKS = [not_a_server_error, response_schema_conformance]


def fuzz_operation(operation, key: str) -> str | None:  # noqa: ANN001
    """Run the generated cases of one operation; the first failure's report, or None."""

    @given(case=operation.as_strategy())
    @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    def run(case) -> None:  # noqa: ANN001
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collected: one run reports every failing operation
        return f"{operation.method.upper()} {operation.path}: {exc}"
    return None


def test_no_server_errors_and_no_schema_violations(service_settings):  # noqa: ANN001, F811
    with running_app(service_settings, run_dispatcher=False) as app:
        key = create_key(service_settings, "fuzz", owner="alice")
        seeded = seed_artifacts(service_settings, "alice")
        from fastapi.testclient import TestClient

        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
            response = client.post("/v1/jobs", json={"checkpoint_id": seeded.checkpoint_id,
                                                     "dataset_id": seeded.dataset_id, "loss": "cross_entropy",
                                                     "config": {"num_chains": 1, "num_draws": 10}})
            assert response.status_code == 202, response.text
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15, [f"{op.method} {op.path}" for op in operations]
        failures = [report for op in operations if (report := fuzz_operation(op, key)) is not None]
    assert not failures, "\n\n".join(failures)
