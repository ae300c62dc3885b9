"""Schemathesis against the real server's OpenAPI document: whatever it generates, valid or not, gets no 5xx,
and every response matches the status codes, content types, headers and bodies the document declares.

The operations are read from the document ``create_app`` builds (the same for any settings; the test checks
the server serves exactly it), one test per operation, and sent to a live server. A bounded run: a fixed
number of examples per operation, derandomised. The fuzzer holds the admin token, so the management routes
run for real (loads of versions 1 and 2, unloads).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings
from live_server import serving, single_torch_thread

from clipwise.models import create_model
from clipwise.models.checkpoint import save_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings

MODEL = "tsn_r18_tiny"
TOKEN = "schema-fuzz-admin-token-0123"
EXAMPLES_PER_OPERATION = 12
OPENAPI = create_app(Settings()).openapi()

schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    repository = tmp_path_factory.mktemp("fuzz") / "repository"
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_version(create_model(MODEL, num_classes=4), ["a", "b", "c", "d"], repository, MODEL, trained=False)
    app_settings = Settings(model_repository=repository, admin_token=TOKEN, max_upload_mb=1.0)
    with single_torch_thread(), serving(create_app(app_settings)) as client:
        assert client.get("/openapi.json").json() == OPENAPI
        yield client


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_api_answers_as_its_schema_says(case: schemathesis.Case, client: httpx.Client) -> None:
    case.call_and_validate(base_url=str(client.base_url), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
