"""Load benchmark: the product beside a bare django-eventstream app (see README)."""
