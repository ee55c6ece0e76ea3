"""The skill engine: skills and their tools, the sandbox that runs them, search collections,
embeddings and example generation. Imports only the ground floor (settings, errors)."""
