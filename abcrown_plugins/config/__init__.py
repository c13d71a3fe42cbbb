"""Configuration: declared once in :mod:`.schema`, loaded and validated by :mod:`.core`."""

from abcrown_plugins.config.core import (
    Config,
    build_config,
    config_warnings,
    default_config,
    dump_config,
    dump_reference,
    load_config,
    parse_override_args,
    read_yaml,
)
from abcrown_plugins.config.schema import SECTIONS, Option, Section

__all__ = ["Config", "Option", "Section", "SECTIONS", "build_config", "config_warnings", "default_config", "dump_config",
           "dump_reference", "load_config", "parse_override_args", "read_yaml"]
