"""Mimics modules/script_callbacks.py: registration and firing of the three callbacks we use."""

callbacks = {"ui_tabs": [], "ui_settings": [], "app_started": []}


def on_ui_tabs(callback, *, name=None):
    callbacks["ui_tabs"].append(callback)


def on_ui_settings(callback, *, name=None):
    callbacks["ui_settings"].append(callback)


def on_app_started(callback, *, name=None):
    callbacks["app_started"].append(callback)


def clear_callbacks():
    for value in callbacks.values():
        value.clear()


def ui_tabs_callback():
    res = []
    for callback in callbacks["ui_tabs"]:
        res += callback() or []
    return res


def ui_settings_callback():
    for callback in callbacks["ui_settings"]:
        callback()


def app_started_callback(demo, app):
    for callback in callbacks["app_started"]:
        callback(demo, app)
