"""Billing wired to the platform: request-time spend control, period close, operations for
the admin API and CLI.
"""
