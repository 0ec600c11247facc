"""Fixtures for the security tests: the service fixtures of tests/helpers.py."""

from tests.helpers import api, code_api, make_api, other_api, service_settings  # noqa: F401
