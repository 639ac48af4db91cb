"""Typed run configuration: the schema users read (`schema`) and the loader that fills it from
YAML files and `key=value` overrides (`loader`). Torch-free."""
