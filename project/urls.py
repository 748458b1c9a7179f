from django.contrib import admin
from django.urls import include, path

from . import api, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", api.readyz, name="readyz"),
    path("api/status", api.status, name="api-status"),
    path("api/machines/<str:name>/report", api.machine_report, name="api-machine-report"),
    path("api/machines/<str:name>", api.machine, name="api-machine"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
