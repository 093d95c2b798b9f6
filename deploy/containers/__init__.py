"""The container harness of `make compose-smoke` and tests/containers (see __main__.py)."""
