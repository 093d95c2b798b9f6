"""chat-proxy: OpenAI-compatible token streaming in front of any OpenAI-compatible upstream."""
