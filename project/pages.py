"""The browser pages: home, chat and the dashboard. The live data comes over WebSockets."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from workers.models import Message

from . import protocol

RECENT_ROOMS = 20


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


@login_required
def chat(request: HttpRequest, room: str | None = None) -> HttpResponse:
    if room is None:
        # The "join a room" form sends ?room=<name>.
        wanted = request.GET.get("room", protocol.DEFAULT_ROOM)
        if not protocol.ROOM_RE.fullmatch(wanted):
            raise Http404("not a room name")
        return redirect("chat-room", room=wanted)
    recent = list(
        Message.objects.order_by("-id").values_list("room", flat=True).distinct()[: RECENT_ROOMS * 5]
    )
    rooms = list(dict.fromkeys([protocol.DEFAULT_ROOM, room, *recent]))[:RECENT_ROOMS]
    return render(
        request,
        "chat.html",
        {
            "section": "chat",
            "room": room,
            "rooms": rooms,
            "room_pattern": protocol.ROOM_PATTERN,
            "max_chars": settings.CHAT_MESSAGE_MAX_CHARS,
            "chat_config": {
                "room": room,
                "user": request.user.get_username(),
                "max_chars": settings.CHAT_MESSAGE_MAX_CHARS,
            },
        },
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard.html", {"section": "dashboard", "states": protocol.MACHINE_STATES})
