"""Errors the CLI turns into one clear line (no traceback): bad data, bad config, bad flags."""


class BenchError(Exception):
    """A user-fixable problem. The message names the file or flag and says what to do."""


class DataError(BenchError):
    """A data file is missing, malformed or empty."""


class ConfigError(BenchError):
    """A preset, config key or flag is unknown or has a bad value."""


class RunInterrupted(BenchError):
    """Ctrl+C (or a SIGTERM Lightning turned into a graceful stop): a sweep stops here too."""
