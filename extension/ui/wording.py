"""Converter messages name CLI flags (``pass --force``); the tab and the REST API name their own controls.

The converters' wording stays for CLI users; a message reaching the tab gets the field label, one
reaching REST the JSON key of the request body.
"""

from __future__ import annotations

import re

TAB_LABELS = {"force": "Overwrite", "base": "Base model", "to": "To", "arch": "Arch", "dtype": "dtype"}
_FLAG = re.compile(r"(pass )?--(force|base|to|arch|dtype)(?![\w-])")


def for_tab(message: str) -> str:
    """``pass --to peft`` -> ``set To peft``; ``pass --force to overwrite it`` -> ``tick Overwrite to replace it``."""
    message = message.replace("pass --force to overwrite it", "tick Overwrite to replace it")
    return _FLAG.sub(lambda m: ("set " if m.group(1) else "") + TAB_LABELS[m.group(2)], message)


def for_rest(message: str) -> str:
    """``pass --base X`` -> ``send "base" X``; ``pass --force ...`` -> ``send "force": true ...``."""
    message = message.replace("pass --force", 'send "force": true')
    return _FLAG.sub(lambda m: ("send " if m.group(1) else "") + f'"{m.group(2)}"', message)
