"""How a route reaches the engine it serves: ``create_app`` puts the ``EngineRuntime`` on
``app.state``; routes take it with ``runtime: RuntimeDep`` (FastAPI ``Depends``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine.runtime import EngineRuntime


def get_runtime(request: Request) -> EngineRuntime:
    """The runtime of the app that received ``request``."""
    return request.app.state.runtime


RuntimeDep = Annotated[EngineRuntime, Depends(get_runtime)]
