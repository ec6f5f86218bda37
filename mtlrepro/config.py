"""Config reading and checking: strict YAML, the JSON schema, then names and values against the registries.

Every problem becomes one :class:`ConfigError` whose message names the file
or starts with the dotted config key (``studies.digits.seeds[0]``) and names
the bad value, so a user sees what to fix without a traceback.

:func:`load_yaml` is stricter than ``yaml.safe_load``: a key written twice in a
mapping (which YAML libraries resolve by silently keeping the last one) is
refused, as are an empty file and a top level that is not a mapping. It reads
any readable file, a pipe such as ``/dev/stdin`` included, and ``-`` means
standard input.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mtlrepro.errors import ConfigError
from mtlrepro.studies import Study, expand, runs_by_directory

#: the JSON schema of a config, shipped inside the package so the installed command finds it from any directory
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
STDIN = "-"
"""The config path that means standard input."""

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TYPE_NAMES = {list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def key_path(parts: Any) -> str:
    """Render a jsonschema error path as ``a.b[0].c``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where (line and column, counted from 1)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        context = f"{err.context}: " if err.context else ""
        mark = err.problem_mark
        return f"{context}{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


def _check_duplicate_keys(root: yaml.Node, loader: Any, source: str) -> None:
    """Refuse a mapping that holds the same key twice (``<<`` merges may override keys; that is their purpose)."""
    stack, seen_nodes = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue  # an alias of a node already checked
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                stack += [key_node, value_node]
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue  # a non-scalar key is unhashable: construction refuses it
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise ConfigError(
                        f"config file {source}: duplicate key {key!r} at line {line} "
                        f"(the first, at line {first_line[key]}, would be silently dropped)"
                    )
                first_line[key] = line
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse the YAML config ``text`` read from ``source`` (named in messages) strictly.

    Raises :class:`ConfigError` naming ``source`` when the text is not YAML,
    holds a key twice in one mapping, is empty (or only comments), or its top
    level is not a mapping.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"config file {source} is empty (or only comments): it needs at least 'studies:'")
        _check_duplicate_keys(root, loader, source)
        config = loader.construct_document(root)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {source} is not valid YAML: {_yaml_problem(err)}") from None
    finally:
        loader.dispose()
    if config is None:
        raise ConfigError(f"config file {source} is empty: it needs at least 'studies:'")
    if not isinstance(config, dict):
        kind = _TYPE_NAMES.get(type(config), type(config).__name__)
        raise ConfigError(f"config file {source}: the top level is {kind}, not a mapping of config keys")
    return config


def read_config_text(path: str | Path) -> tuple[str, str]:
    """``(text, source)`` of a config: any readable file (a pipe too), or standard input for ``-``.

    Raises :class:`ConfigError` naming the file when it is missing, cannot be
    read, or is not UTF-8 text.
    """
    if str(path) == STDIN:
        source = "<stdin>"
        if sys.stdin is None:
            raise ConfigError("config file -: there is no standard input to read the config from")
        data = sys.stdin.buffer.read()
    else:
        source = str(path)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {source} is a directory, not a YAML file") from None
        except OSError as err:
            raise ConfigError(f"config file {source} cannot be read ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig"), source
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {source} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): "
            "save it as UTF-8"
        ) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read and parse a YAML config strictly (see :func:`parse_yaml`); ``-`` reads standard input."""
    return parse_yaml(*read_config_text(path))


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
