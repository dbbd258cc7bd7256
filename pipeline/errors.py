"""The few errors the pipeline raises on purpose.

Each carries a one-line message that names the offending key, column or version and says
how to fix it; the CLI prints that line and exits non-zero without a stack trace.
"""


class PipelineError(Exception):
    """Base class: an expected failure the user can fix."""

    exit_code = 1


class ConfigError(PipelineError):
    """The YAML config is missing, malformed or refers to something that does not exist."""

    exit_code = 2


class DataValidationError(PipelineError):
    """The data set breaks the contract declared by the config."""

    exit_code = 3


class RegistryError(PipelineError):
    """A registry operation cannot be done (unknown model or version, nothing to roll back to)."""

    exit_code = 4
