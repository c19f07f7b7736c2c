from django.urls import path

from . import views

app_name = "notifications"

urlpatterns = [
    path("", views.index, name="index"),
    path("button-pressed/", views.button_pressed, name="button_pressed"),
    path("notifications/", views.stream, name="stream"),
    path("report/", views.report_start, name="report_start"),
    path("notifications/unread/", views.unread, name="unread"),
    path("notifications/<int:pk>/read/", views.mark_read, name="mark_read"),
    path("notifications/read-all/", views.mark_all_read, name="mark_all_read"),
]
