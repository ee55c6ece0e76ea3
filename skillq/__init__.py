"""skillq: background jobs for AI tool servers, on Dramatiq."""
