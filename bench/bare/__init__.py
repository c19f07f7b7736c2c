"""A bare django-eventstream app: no storage, no sessions, no database.

It is the yardstick of the benchmark: what the library alone costs on the same
Daphne, so the product's figures read as a ratio to it.
"""
