"""Dramatiq brokers that skillq builds on or fixes."""
