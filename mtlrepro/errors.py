"""Errors that are the user's to fix: the CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Base class of errors caused by input (config, data, options), not by a bug."""


class ConfigError(UserError):
    """A config key or value is invalid; the message names the key and the value."""


class DataError(UserError):
    """Input data is missing, corrupt or fails its checksum; the message names the file."""


class TrainingError(UserError):
    """Training cannot go on (for example a non-finite loss); the message says where."""


class OutputError(UserError):
    """An output file cannot be written (no permission, not a directory, disk full); the message names it."""
