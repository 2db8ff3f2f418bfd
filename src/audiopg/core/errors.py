"""Exceptions for bad input that the CLI reports as one clear line."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range.

    The message always starts with the dotted key that is wrong.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class AudioPGError(Exception):
    """Base class: bad input (a file, a checkpoint, a run folder) with a message saying what was expected."""


class AudioFileError(AudioPGError):
    """An audio file is unreadable, empty or corrupt; the message names the file."""


class CheckpointError(AudioPGError):
    """A checkpoint or run folder does not match what was asked for."""
