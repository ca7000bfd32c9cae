"""schemathesis fuzzes every operation of /openapi.json on the real server: no 5xx, no response
outside the schema, no hang. The number of generated cases is printed."""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pipeline.api.tokens import create_token
from tests.apiserver import serving

# Not checked: that every schema-valid request is accepted. A prompt set's rules (unique ids, known
# providers, a size within a provider's limits…) are more than a JSON schema can say; the server
# refuses those with 422 and the JSON path, which is what the tests of test_api.py check.
MAX_EXAMPLES = 12  # per operation: the whole fuzz stays well under a minute on this machine
REQUEST_TIMEOUT_S = 10  # a hang fails the case


def test_fuzzing_the_openapi_schema_finds_no_server_error_and_no_schema_violation(settings, engine, capsys) -> None:
    _, token = create_token(engine, "fuzzer", "operator")  # operator: every route but token management is reachable
    headers = {"Authorization": f"Bearer {token}"}
    cases = 0
    with serving(settings, engine) as base, requests.Session() as http:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 18
        for operation in operations:

            @given(case=operation.as_strategy())
            @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:  # type: ignore[no-untyped-def]
                nonlocal cases
                cases += 1
                case.call_and_validate(base_url=base, session=http, headers=headers, timeout=REQUEST_TIMEOUT_S,
                                       excluded_checks=[positive_data_acceptance])

            fuzz()
    with capsys.disabled():
        print(f"\nschemathesis: {cases} generated cases over {len(operations)} operations, no failure")
    assert cases >= len(operations)
