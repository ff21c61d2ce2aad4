"""How a route reaches the engine it serves: ``create_app`` puts the ``EngineRuntime`` on
``app.state``; routes take it with ``runtime: RuntimeDep`` (FastAPI ``Depends``) and the
authenticated caller with ``caller: CallerDep`` (``engine.tenancy``)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request

from engine.runtime import EngineRuntime
from engine.tenancy import EVERYONE, Caller


def get_runtime(request: Request) -> EngineRuntime:
    """The runtime of the app that received ``request``."""
    return request.app.state.runtime


RuntimeDep = Annotated[EngineRuntime, Depends(get_runtime)]


async def get_caller(request: Request) -> Caller:
    """The caller of ``request``: everyone under ``LORAFLEET_ENGINE_AUTH=none``; else the
    registry's answer about its bearer token (cached; asked off the event loop on a miss).
    401 for no, a bad, an expired or a revoked token; 503 when it cannot be checked."""
    verifier = get_runtime(request).auth
    if verifier is None:
        return EVERYONE
    header = request.headers.get("authorization")
    caller = verifier.cached(header)
    if caller is None:
        caller = await asyncio.to_thread(verifier.resolve, header)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
