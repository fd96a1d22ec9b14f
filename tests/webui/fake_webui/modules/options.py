"""Mimics modules/options.py (A1111 1.10.1; the same in Forge and Forge Neo): ``OptionInfo``, the settings
categories (``categories.register_category``, ``categories.mapping``) and how the settings page groups
sections by them (``Options.dumpjson``'s ``_categories``: an unregistered ``category_id`` lands under
"Extensions")."""

import json
from collections import namedtuple


class OptionInfo:
    """``OptionInfo(default, label, component, component_args, ..., section, category_id)``."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.category_id = section, category_id
        self.restrict_api = restrict_api


OptionsCategory = namedtuple("OptionsCategory", ["id", "label"])


class OptionsCategories:
    def __init__(self):
        self.mapping = {}

    def register_category(self, category_id, label):
        if category_id in self.mapping:
            return category_id
        self.mapping[category_id] = OptionsCategory(category_id, label)


categories = OptionsCategories()


class Options:
    """``data``, ``data_labels``, ``add_option``, attribute reads, ``dumpjson``."""

    def __init__(self):
        object.__setattr__(self, "data", {"sd_model_checkpoint": None})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def set(self, key, value, is_api=False, run_callbacks=True):
        """``Options.set``: refuses an API change of a ``restrict_api`` option and, with --hide-ui-dir-config,
        any change of a ``restricted_opts`` key (the real ``__setattr__`` raises for those)."""
        from modules import shared

        if self.data.get(key) == value:
            return False
        if is_api and self.data_labels[key].restrict_api:
            return False
        if shared.cmd_opts.hide_ui_dir_config and key in shared.restricted_opts:
            return False
        self.data[key] = value
        return True

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        raise AttributeError(item)

    def dumpjson(self):
        d = {k: self.data.get(k, v.default) for k, v in self.data_labels.items()}
        item_categories = {}
        for item in self.data_labels.values():
            if item.section is None or item.section[0] is None:
                continue
            category = categories.mapping.get(item.category_id)
            category = "Extensions" if category is None else category.label
            if category not in item_categories:
                item_categories[category] = item.section[1]
        d["_categories"] = [[v, k] for k, v in item_categories.items()] + [["Defaults", "Other"]]
        return json.dumps(d)
