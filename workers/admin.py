from django.contrib import admin

from .models import Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "room", "author", "created", "client_id")
    list_filter = ("room",)
    search_fields = ("author", "body")
    readonly_fields = ("created",)
