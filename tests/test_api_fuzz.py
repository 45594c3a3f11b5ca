"""A bounded property-based run over /openapi.json (schemathesis, valid and invalid input), as a super admin and
as a tenant admin: no answer is a server error, and every answer matches the schema documented for its status."""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token
from helpers import create_tenant

OWN_TENANT = "fuzz-clinic"
EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "10"))  # per operation; raise it locally to search harder


@pytest.fixture
def bearers(client, auth, ctx) -> list[dict[str, str]]:
    create_tenant(client, auth, OWN_TENANT)
    tokens = [create_token(ctx, TokenRole.SUPER_ADMIN, "fuzz")[1],
              create_token(ctx, TokenRole.TENANT_ADMIN, "fuzz", OWN_TENANT)[1]]
    return [{"Authorization": f"Bearer {token}"} for token in tokens]


def test_no_input_is_a_server_error_and_answers_match_the_document(app, bearers):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_well(case) -> None:
            for headers in bearers:  # the same input from each role
                case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

        try:
            answers_well()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup: collect all, report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
