"""Lucie-7B's three training phases as Megatron-Bridge recipes (one file per phase)."""

from recipes.anneal import anneal_recipe
from recipes.extension import extension_recipe
from recipes.pretrain import pretrain_recipe

RECIPES = {"pretrain": pretrain_recipe, "extension": extension_recipe, "anneal": anneal_recipe}

__all__ = ["RECIPES", "anneal_recipe", "extension_recipe", "pretrain_recipe"]
