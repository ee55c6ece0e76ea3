"""The services floor: the jobs coordinator, job types, recovery, schedules, the registry view.

Above the store and the brokers, below the actors, the API and the CLI.
"""
