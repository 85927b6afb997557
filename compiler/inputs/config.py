"""config.json -> the config of its architecture, through the model registry (compiler/models/).

`load_config` reads the file; `parse_config` picks the registered architecture by the
`architectures` value and hands the dict to that architecture's parser (its config class lives in
its model folder: compiler/models/phi3/config.py's Phi3Config).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgesmith.compiler.models import DEFAULT_ARCHITECTURE, get_architecture, supported
from edgesmith.errors import ConfigError, one_line


def load_config(source: str | Path | dict):
    """A folder holding config.json, a config.json path, or an already-parsed dict."""
    if isinstance(source, dict):
        return parse_config(source, where="config dict")
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json in folder {path.parent} — point at a Hugging Face checkpoint folder")
    elif not path.is_file():
        raise ConfigError(f"checkpoint path {path} does not exist — give a checkpoint folder or its config.json")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON ({one_line(e)}) — re-download the checkpoint") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds a {type(raw).__name__}, not a JSON object — re-download the checkpoint")
    return parse_config(raw, where=str(path))


def parse_config(raw: dict[str, Any], where: str = "config"):
    """The registered architecture's config for a config.json dict (one-line ConfigError if none)."""
    archs = raw.get("architectures") or [DEFAULT_ARCHITECTURE]
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise ConfigError(f"{where} says architecture {archs!r}; edgesmith compiles {supported()} only")
    return get_architecture(archs[0], where).parse_config(raw, where)
