"""Datastore images: recipes, and the builder that turns them into root filesystems."""

from oneplatform.images.recipes import BUILDER_VERSION, Recipe, list_recipes, load_recipe

__all__ = ["BUILDER_VERSION", "Recipe", "list_recipes", "load_recipe"]
