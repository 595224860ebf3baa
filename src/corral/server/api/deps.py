"""Dependencies every API module uses: the server context, and namespace/name checks."""

from __future__ import annotations

import re

from fastapi import Request

from corral.model.application import NAME_PATTERN
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = ["check_name", "get_ctx"]

_NAME = re.compile(NAME_PATTERN)


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ApiError(400, f"invalid {what} {value!r}: lowercase letters, digits and '-', "
                            "starting with a letter")
    return value
