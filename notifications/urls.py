from django.urls import path

from . import views

app_name = "notifications"

urlpatterns = [
    path("", views.index, name="index"),
    path("button-pressed/", views.button_pressed, name="button_pressed"),
    path("notifications/", views.stream, name="stream"),
    path("report/", views.report_start, name="report_start"),
]
