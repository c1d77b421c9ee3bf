"""The worker's web server: our routes only.

Faust mounts its own pages on the worker's web server (`/table/<name>/<key>/` reads any table key,
`/router/` maps partitions to workers, `/graph/`, `/` with statistics, ...). Their answers are
shopper windows and the cluster's layout, without any authentication, on a server that binds
0.0.0.0 in containers. `OwnRoutesWeb` mounts none of them: what the worker serves is what
`intent.stream.routes` mounts (health and metrics from `intent.observability`, the API of `intent.webhooks.api`)
and the read API of `intent.read.api`.
"""

from __future__ import annotations

from typing import Any

from faust.web.drivers.aiohttp import Web


class OwnRoutesWeb(Web):
    """Faust's aiohttp web server without any of Faust's blueprints, whatever its settings say."""

    def _enabled_blueprints(self) -> list[tuple[str, Any]]:
        return []
