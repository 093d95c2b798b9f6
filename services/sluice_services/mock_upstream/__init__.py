"""mock_upstream: an OpenAI-compatible model server with deterministic tokens and faults."""
