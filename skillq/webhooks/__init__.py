"""Webhooks: a job's outcome (and, throttled, its progress) sent to the URLs that asked.

- `addresses`: the SSRF guard every URL passes, at submission and before each attempt.
- `events`: turns a job's outcome into stored deliveries (the outbox) and sends them off.
- `delivery`: one signed attempt (Standard Webhooks) and the retry schedule.
- `middleware`: the worker side that notices outcomes and progress as they happen.
"""
