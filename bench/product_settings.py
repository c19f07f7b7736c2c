"""The product's own settings plus the benchmark's sending endpoints.

Only the URL configuration differs from `notifysite.settings`, so the product
is measured as it is deployed.
"""

from __future__ import annotations

from notifysite.settings import *  # noqa: F403

ROOT_URLCONF = "bench.product_urls"
