"""The example skills shipped with skillq, installed as `skillq.example_skills`.

Each folder with a `skill.toml` is one skill; nothing here is imported as code by skillq.
The default `[skills] paths` points at this package's folder.
"""
