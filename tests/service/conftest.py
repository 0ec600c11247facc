"""Fixtures for the service tests; defined in tests/helpers.py so other test folders can import them."""

from tests.helpers import api, code_api, make_api, other_api, service_settings  # noqa: F401
