"""Config checking: the JSON schema first, then names and values against the registries.

Every problem becomes one :class:`ConfigError` whose message starts with the
dotted config key (``studies.digits.seeds[0]``) and names the bad value, so a
user sees what to fix without a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mtlrepro.errors import ConfigError
from mtlrepro.studies import Study, expand, runs_by_directory

#: the JSON schema of a config, shipped inside the package so the installed command finds it from any directory
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


def key_path(parts: Any) -> str:
    """Render a jsonschema error path as ``a.b[0].c``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; :class:`ConfigError` naming the file if it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None


def validate_schema(config: Any, schema: Mapping[str, Any]) -> None:
    """Check ``config`` against the JSON ``schema``; raise the most relevant error as one line."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(f"{key_path(error.absolute_path)}: {error.message}")


def check_config(config: Any, schema_file: str | Path = SCHEMA_FILE) -> dict[str, Study]:
    """Validate ``config`` fully (schema, names, option values) and return its expanded studies."""
    validate_schema(config, load_yaml(schema_file))
    studies = expand(config)
    runs_by_directory(studies)
    return studies
