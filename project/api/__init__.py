"""The HTTP edge, like ``consumers/`` for sockets: it authenticates, checks and hands work on.

- ``reports``: the agents' API (reports and removals, bearer token), queued for the status workers;
- ``batch``: many machines' reports in one request;
- ``views``: the status snapshot for logged-in users and the readiness probe;
- ``auth``, ``tokens``: the agents' bearer tokens, named and revocable;
- ``errors``: the JSON error shape every answer uses;
- ``connections``: the web process's asyncio Redis client.

``project/urls.py`` routes to the names exported here.
"""

from .batch import report_batch
from .reports import machine, machine_report
from .views import readyz, status

__all__ = ["machine", "machine_report", "readyz", "report_batch", "status"]
