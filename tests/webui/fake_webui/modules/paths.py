"""Mimics modules/paths.py (tests point these at a temporary folder): ``script_path`` is the WebUI's
install folder (Forge's ``backend/`` lives there), ``data_path`` the user data (outputs/)."""

models_path = "models"
data_path = "."
script_path = "."
