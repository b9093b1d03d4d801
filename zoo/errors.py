"""User-facing errors: the CLI prints them as one line (no traceback unless --debug)."""


class GenpipeError(Exception):
    """An error caused by input or environment that the user can fix; the message says how."""


class DataError(GenpipeError):
    """Bad input data: names the source, the record and what is valid."""


class ConfigError(GenpipeError):
    """Bad configuration value: names the key, the value and what is valid."""


class StackError(GenpipeError):
    """The embedded stack (SeaweedFS / MLflow) cannot start or is unreachable."""


class TrainingDiverged(GenpipeError):
    """Loss became NaN/Inf or gradients exploded; the last good checkpoint is kept."""
