from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from .models import AgentToken, Machine, Message, Software


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


@admin.register(AgentToken)
class AgentTokenAdmin(admin.ModelAdmin):
    """Agent tokens: add one (its secret is shown once, on the page after saving), revoke with
    the list's action. Nothing is deleted: a revoked token keeps its name, and logs name it."""

    list_display = ("name", "state", "created_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name",)
    readonly_fields = ("created_at", "revoked_at")
    actions = ["revoke"]

    @admin.display(description="state")
    def state(self, token: AgentToken) -> str:
        return "active" if token.revoked_at is None else "revoked"

    def get_readonly_fields(self, request, token=None):
        return ("name", *self.readonly_fields) if token else ()

    def get_fields(self, request, token=None):
        return ("name", *self.readonly_fields) if token else ("name",)

    def has_delete_permission(self, request, token=None) -> bool:
        return False

    def save_model(self, request, token: AgentToken, form, change: bool) -> None:
        if not change:
            token.secret_once = token.issue()
        super().save_model(request, token, form, change)

    def response_add(self, request, token: AgentToken, post_url_continue=None):
        response = TemplateResponse(
            request,
            "admin/workers/agenttoken/issued.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": f"Agent token {token.name}",
                "token": token,
                "secret": token.secret_once,
            },
        )
        add_never_cache_headers(response)  # the one page that ever holds the secret
        return response

    @admin.action(description="Revoke selected agent tokens", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        revoked = [token.name for token in queryset if token.revoke()]
        if revoked:
            self.message_user(
                request, f"Revoked {', '.join(revoked)}: the report API refuses them within a second."
            )
        else:
            self.message_user(request, "Those tokens were already revoked.", messages.WARNING)
