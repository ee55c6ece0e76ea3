"""The HTTP side of skillq: a Starlette app over the jobs coordinator."""
