"""The `onep` command line, built on the SDK."""
