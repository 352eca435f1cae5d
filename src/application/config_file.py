"""Reading ``config.toml`` into a :class:`PredictorConfig`."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..domain import ConfigError, PredictorConfig, config_from_sections


def load_config(path: str | Path) -> PredictorConfig:
    """Parse a sectioned TOML file; every problem is a ConfigError naming the key or line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        sections = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_sections(sections)
