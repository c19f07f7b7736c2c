"""Settings of the bare comparison app: django-eventstream and nothing else."""

from __future__ import annotations

SECRET_KEY = "bench-bare-app-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django_eventstream"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.bare.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_eventstream": {"level": "WARNING"}},
}
