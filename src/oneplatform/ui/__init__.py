"""The web dashboard at ``/ui``: server-rendered pages on the platform's own services."""

from oneplatform.ui.pages import mount

__all__ = ["mount"]
