"""ASGI entry point: `daphne notifysite.asgi:application` serves the whole site.

The event stream and the ordinary synchronous views share one application.
With DJANGO_DEBUG on, static files are served too, so the page works under a
bare Daphne without collectstatic or a separate web server.
"""

import gc
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

# Each open page keeps a couple of hundred small objects, so a process with
# 10,000 pages tracks about two million, and a full cyclic collection of them
# takes a second on the event loop's thread: every page waits. Moving what
# startup made (Django, the URLconf, the models) out of the collector's sight,
# and collecting the young generations less often, keeps full collections
# rare; garbage without cycles is freed by reference counting as before.
gc.freeze()
gc.set_threshold(20_000, 20, 100)
