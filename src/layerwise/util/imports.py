"""Objects named in configs as `package.module:Name`, imported on demand.

A config names user code (a callback class) by its import path rather than holding it, so a
config stays plain YAML; the loader imports it once to report a typo against the file that
made it, and whoever uses the object imports it again (a dictionary look-up by then).
"""

from __future__ import annotations

import importlib


def import_object(path: str) -> object:
    """The object `package.module:Name` names; ValueError with the reason when it cannot be had."""
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{path!r} must look like package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name} ({exc})") from None
    try:
        found: object = module
        for part in attribute.split("."):
            found = getattr(found, part)
    except AttributeError:
        raise ValueError(f"module {module_name} has no {attribute!r}") from None
    return found
