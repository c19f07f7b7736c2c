from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from .models import Notification, Visitor
from .services import notification_send, notification_validate


class NotificationAddForm(forms.ModelForm):
    """Compose a notification and choose its audience; saving sends it."""

    AUDIENCES = [
        ("session", "One browser session"),
        ("user", "One user (all their sessions)"),
        ("broadcast", "Everyone"),
    ]
    audience = forms.ChoiceField(
        choices=AUDIENCES, widget=forms.RadioSelect, initial="session"
    )

    class Meta:
        model = Notification
        fields = ["audience", "visitor", "user", "level", "event_type", "message"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        audience = cleaned.get("audience")
        if audience == "session" and not cleaned.get("visitor"):
            self.add_error("visitor", "Choose the browser session to notify.")
        if audience == "user" and not cleaned.get("user"):
            self.add_error("user", "Choose the user to notify.")
        # Only the chosen audience's field counts; the other is cleared.
        if audience != "session":
            cleaned["visitor"] = None
        if audience != "user":
            cleaned["user"] = None
        if self.errors:
            return cleaned
        try:
            notification_validate(
                message=cleaned.get("message", ""),
                level=cleaned.get("level", ""),
                event_type=cleaned.get("event_type", ""),
                visitor=cleaned["visitor"],
                user=cleaned["user"],
                broadcast=audience == "broadcast",
            )
        except ValidationError as exc:
            self.add_error(None, exc)
        return cleaned


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "level",
        "audience_display",
        "short_message",
        "read_at",
    ]
    list_filter = [
        "level",
        "event_type",
        ("visitor", admin.EmptyFieldListFilter),
        "created_at",
    ]
    search_fields = ["message"]
    autocomplete_fields = ["visitor", "user"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "level",
        "message",
        "event_type",
        "visitor",
        "user",
        "channel",
        "seq",
        "created_at",
        "read_at",
    ]

    @admin.display(description="audience")
    def audience_display(self, obj: Notification) -> str:
        if obj.visitor_id:
            return f"session {obj.visitor.token[:8]}…"
        if obj.user_id:
            return f"user {obj.user}"
        return "everyone"

    @admin.display(description="message")
    def short_message(self, obj: Notification) -> str:
        # Plain text: the admin escapes it like any other value.
        return obj.message if len(obj.message) <= 80 else obj.message[:79] + "…"

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("visitor", "user")

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ):
        if obj is None:
            kwargs["form"] = NotificationAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A sent notification is a record of what was said: it is not edited.
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return list(NotificationAddForm.Meta.fields)
        return self.readonly_fields

    def save_model(
        self, request: HttpRequest, obj: Notification, form: Any, change: bool
    ) -> None:
        if change:
            return
        audience = form.cleaned_data["audience"]
        sent = notification_send(
            message=obj.message,
            level=obj.level,
            event_type=obj.event_type,
            visitor=form.cleaned_data["visitor"],
            user=form.cleaned_data["user"],
            broadcast=audience == "broadcast",
        )
        # The admin's success message and redirect read the saved object.
        obj.pk = sent.pk
        obj.channel, obj.seq, obj.created_at = sent.channel, sent.seq, sent.created_at


@admin.register(Visitor)
class VisitorAdmin(admin.ModelAdmin):
    list_display = ["short_token", "user", "first_seen", "last_seen"]
    list_filter = [("user", admin.EmptyFieldListFilter), "last_seen"]
    search_fields = ["token", "user__username", "user__email"]
    readonly_fields = ["token", "user", "first_seen", "last_seen"]

    @admin.display(description="token", ordering="token")
    def short_token(self, obj: Visitor) -> str:
        return f"{obj.token[:8]}…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Browser sessions come into being when someone opens the page.
        return False
