"""Errors as OpenAI sends them: an HTTP error's body, and the ``data:`` event that ends a
chat or legacy completions stream that failed after its first byte."""

from __future__ import annotations

from starlette.responses import JSONResponse

from sluice_services.mock_upstream.text import dumps

MID_STREAM_CODE = "mock_mid_stream"
MID_STREAM_MESSAGE = "mock upstream failed mid-stream"


def openai_error(status: int, message: str, code: str | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with HTTP ``status``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": None, "code": code or f"mock_{status}"}
    return JSONResponse({"error": error}, status_code=status)


def mid_answer_error() -> JSONResponse:
    """A non-streamed answer that failed partway (``error_after``): HTTP 500."""
    return openai_error(500, "mock upstream failed mid-answer", "mock_mid_answer")


# The chat/completions streams' last event when they fail mid-stream (no [DONE] after it).
MID_STREAM_FRAME = (
    "data: "
    + dumps(
        {
            "error": {
                "message": MID_STREAM_MESSAGE,
                "type": "server_error",
                "param": None,
                "code": MID_STREAM_CODE,
            }
        }
    )
    + "\n\n"
).encode()
