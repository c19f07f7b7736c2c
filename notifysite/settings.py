"""Settings for the notifysite project.

Every value that differs between machines comes from the environment; the
defaults run the embedded development setup (SQLite, one process, DEBUG on).
Environment variables are read here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (1/0, true/false), not {value!r}"
    )


def env_number(name: str, default: float) -> float:
    """Environment variable `name` as a number of `default`'s type, or `default`."""
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return type(default)(value)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number of seconds"
        raise ImproperlyConfigured(f"{name} must be {kind}, not {value!r}") from None


def env_list(name: str, default: str) -> list[str]:
    return [
        item.strip()
        for item in os.environ.get(name, default).split(",")
        if item.strip()
    ]


DEBUG = env_bool("DJANGO_DEBUG", True)

_DEV_SECRET = "django-insecure-development-only-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off."
        )
    SECRET_KEY = _DEV_SECRET

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's WSGI one and serves ASGI,
    # without which the event stream never reaches the browser.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_eventstream",
    "django_tasks_db",
    "notifications",
]

# No GZipMiddleware or anything else that consumes a response body: the event
# stream must leave the server event by event.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "notifysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "notifysite.asgi.application"

# Database: DATABASE_URL, or a SQLite file beside manage.py.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=0,
    )
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and IMMEDIATE transactions let the server and a worker process write
    # to one file without "database is locked" errors.
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so that a Daphne child process shares the test data.
    _db["TEST"] = {"NAME": str(BASE_DIR / f"test_db_{os.getpid()}.sqlite3")}
elif _db["ENGINE"] == "django.db.backends.postgresql":
    # Django's connection pool: streams borrow a connection only while they
    # read, so thousands of open pages do not hold thousands of connections.
    _db["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 20, "timeout": 10}}
    _db["CONN_MAX_AGE"] = 0
del _db

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# Production hardening, in force whenever DEBUG is off.
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Database sessions, each read in one plain query (every stream connect reads one).
SESSION_ENGINE = "notifications.sessions"

# Django's tasks framework; the database backend runs jobs in a worker process
# (`manage.py db_worker`).
TASKS = {
    "default": {
        "BACKEND": os.environ.get(
            "NOTIFICATIONS_TASK_BACKEND", "django_tasks_db.DatabaseBackend"
        ),
    }
}

# --- django-eventstream -----------------------------------------------------
# The channel manager derives a stream's channels from its session and user
# only; the storage class replays from the Notification table.
EVENTSTREAM_CHANNELMANAGER_CLASS = (
    "notifications.channelmanager.NotificationChannelManager"
)
EVENTSTREAM_STORAGE_CLASS = "notifications.storage.NotificationStorage"
# CORS stays off unless an origin is configured; credentials never go with "*".
EVENTSTREAM_ALLOW_ORIGINS = env_list("NOTIFICATIONS_CORS_ORIGINS", "")
EVENTSTREAM_ALLOW_CREDENTIALS = bool(EVENTSTREAM_ALLOW_ORIGINS)

# --- notifications ----------------------------------------------------------
NOTIFICATIONS_TRANSPORT = os.environ.get("NOTIFICATIONS_TRANSPORT", "") or None
NOTIFICATIONS_REDIS_URL = os.environ.get("REDIS_URL", "") or None
NOTIFICATIONS_POLL_INTERVAL = env_number("NOTIFICATIONS_POLL_INTERVAL", 1.0)
NOTIFICATIONS_REPORT_STEP_SECONDS = env_number("NOTIFICATIONS_REPORT_STEP_SECONDS", 1.0)
NOTIFICATIONS_STREAM_STALL_SECONDS = env_number(
    "NOTIFICATIONS_STREAM_STALL_SECONDS", 30.0
)
NOTIFICATIONS_REPORTS_PER_MINUTE = env_number("NOTIFICATIONS_REPORTS_PER_MINUTE", 5)

_LOG_LEVEL = os.environ.get("NOTIFICATIONS_LOG_LEVEL", "INFO").upper()
if _LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"NOTIFICATIONS_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
        f"not {_LOG_LEVEL!r}"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {
        "notifications": {
            "handlers": ["console"],
            "level": _LOG_LEVEL,
            "propagate": False,
        },
        # django-eventstream logs every listener at INFO with its object id.
        "django_eventstream": {"handlers": ["console"], "level": "WARNING"},
    },
}
