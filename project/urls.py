from django.contrib import admin
from django.urls import include, path, re_path

from . import api, pages, views
from .api.metrics import metrics_view
from .api.openapi import openapi
from .protocol import ROOM_PATTERN

urlpatterns = [
    # The agents' API first: every report resolves its path (project/api/direct.py), and Django
    # tries the patterns in order.
    path("api/machines/<str:name>/report", api.machine_report, name="api-machine-report"),
    path("api/reports", api.report_batch, name="api-reports"),
    path("api/machines/<str:name>", api.machine, name="api-machine"),
    path("", pages.home, name="home"),
    path("chat/", pages.chat, name="chat"),
    re_path(rf"^chat/(?P<room>{ROOM_PATTERN})/$", pages.chat, name="chat-room"),
    path("dashboard/", pages.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", api.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/openapi.json", openapi, name="api-openapi"),
    path("api/status", api.status, name="api-status"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
