"""Mimics modules/paths.py (tests point these at a temporary folder)."""

models_path = "models"
data_path = "."
