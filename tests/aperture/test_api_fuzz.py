"""Property-based: schemathesis sends generated requests (valid and malformed) to every
management operation in the schema; none may answer a 500 or stray from the schema."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from aperture.wsgi import application
from tenants import services
from tenants.models import Team
from tests.openapi_check import published_schema

schema = schemathesis.openapi.from_dict(published_schema())
schema.app = application
# Bodies and parameters that fit the schema, and ones that break it (wrong types, missing
# fields, out-of-range values): the second kind must be a 4xx, never a 500. Seeded, so a
# run is repeatable.
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True
)


@pytest.fixture
def admin_header(transactional_db: None, team: Team) -> dict[str, str]:
    """Committed rows: the cases call the WSGI application itself, which opens and closes
    its own database connection per request as in production."""
    created = services.key_create(
        actor="system:tests", team=team, name="fuzz admin", scopes=["manage:workspace"]
    )
    return {"Authorization": f"Bearer {created.secret}"}


@schema.include(path_regex="^/api/v1/").parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_management_request_is_a_server_error(case, admin_header) -> None:
    case.call_and_validate(
        headers=admin_header,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )
