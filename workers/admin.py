from django.contrib import admin

from .models import Machine, Message, Software


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "room", "author", "created", "client_id")
    list_filter = ("room",)
    search_fields = ("author", "body")
    readonly_fields = ("created",)


class SoftwareInline(admin.TabularInline):
    model = Software
    extra = 0


@admin.register(Machine)
class MachineAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "progress", "last_report")
    list_filter = ("state",)
    search_fields = ("name",)
    inlines = [SoftwareInline]
