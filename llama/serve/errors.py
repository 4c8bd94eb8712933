"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

from typing import Dict, Optional


class APIError(Exception):
    """An error the server answers with, in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error", headers: Optional[Dict[str, str]] = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_field(param: str, rule: str, value) -> APIError:
    """400 for a field of the request that is missing, of the wrong type or out of range."""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return APIError(400, f"'{param}' must be {rule}, got {shown}", param=param, code="invalid_value")
