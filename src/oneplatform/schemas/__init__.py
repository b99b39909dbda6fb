"""The platform's public models, shared by the API server and the SDK: one module per resource.

Strict on write (``extra="forbid"``), lenient on read (unknown fields are ignored), so an
older client keeps working against a newer server. Nothing here imports the rest of the
platform: the SDK installs with these models and nothing else.
"""
