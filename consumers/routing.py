"""WebSocket routes. Paths no route serves are refused at the handshake."""

from django.urls import path, re_path

from project.protocol import ROOM_PATTERN

from .base import RefuseConsumer
from .chat import ChatConsumer
from .status import StatusConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    re_path(rf"^ws/chat/(?P<room>{ROOM_PATTERN})/$", ChatConsumer.as_asgi()),
    path("ws/status/", StatusConsumer.as_asgi()),
    path("ws/attime/", StatusConsumer.as_asgi()),
    re_path(r"", RefuseConsumer.as_asgi()),
]
