"""ASGI entry point: `daphne notifysite.asgi:application` serves the whole site.

The event stream and the ordinary synchronous views share one application.
With DJANGO_DEBUG on, static files are served too, so the page works under a
bare Daphne without collectstatic or a separate web server.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifysite.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (needs the settings configured above)

# Event streams share a few threads instead of holding one OS thread each.
from notifications.streaming import SharedStreamThreads  # noqa: E402

if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = SharedStreamThreads(ASGIStaticFilesHandler(django_application))
else:
    application = SharedStreamThreads(django_application)
