"""OpenStack's APIs over the platform's own services: thin translations, no second logic."""
