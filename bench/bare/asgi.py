"""ASGI entry of the bare app: `daphne bench.bare.asgi:application`."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.bare.settings")

application = get_asgi_application()
