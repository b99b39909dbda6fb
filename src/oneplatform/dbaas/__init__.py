"""Databases as a service, on whatever compute type the flavor picks."""
