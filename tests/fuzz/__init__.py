"""Schemathesis against every service's OpenAPI, on its own port and through nginx."""
