from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

# Sign-in, sign-out and password change only: the password reset views need an
# email backend this project does not configure, and would say "sent" for
# mail that never leaves.
urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("", include("notifications.urls")),
]
