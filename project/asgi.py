"""ASGI entry point: HTTP, WebSockets and the worker channels, routed by protocol type.

``get_asgi_application()`` runs first: it sets Django up, so that the imports after it
may touch models.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402

from consumers.routing import websocket_urlpatterns  # noqa: E402
from project.api.direct import DirectAgentApi  # noqa: E402
from project.database_connections import ClosingConnections  # noqa: E402
from project.socket_auth import SessionUserMiddleware  # noqa: E402
from project.socket_origin import AllowedOriginMiddleware  # noqa: E402
from workers.routing import worker_channels  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": DirectAgentApi(ClosingConnections(django_asgi_app)),
        "websocket": AllowedOriginMiddleware(SessionUserMiddleware(URLRouter(websocket_urlpatterns))),
        "channel": ChannelNameRouter(worker_channels),
    }
)
