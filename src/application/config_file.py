"""Reading ``config.toml`` into a :class:`PredictorConfig`."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..domain import ConfigError, PredictorConfig, config_from_sections


def load_config(path: str | Path) -> PredictorConfig:
    """Parse a sectioned UTF-8 TOML file (a leading BOM is allowed).

    Raises:
        ConfigError: the file cannot be read or is not UTF-8, is not TOML, or a key is unknown,
            mistyped or out of range; the message names the file, the key or the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    try:
        sections = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return config_from_sections(sections)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
