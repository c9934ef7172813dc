"""``GET /dashboard``: a live page of the cluster, served by the node itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ..runtime import Runtime
    from .routes import Routes

__all__ = ["add_dashboard"]


def add_dashboard(app: QuartTrio, runtime: Runtime, routes: Routes) -> None:
    """Add the dashboard's routes to ``app``."""
