"""Errors a person can act on: each message says what is wrong and what to do."""

from __future__ import annotations


class ViolinError(Exception):
    """Base of every user-facing error of the switch (printed without a traceback, exit 2)."""

    exit_status = 2


class ConfigError(ViolinError):
    """The configuration file or a flag is wrong."""


class KeyFileError(ConfigError):
    """The network key file is missing, unreadable or malformed."""


class TapError(ViolinError):
    """The TAP device cannot be opened or configured."""


class ControlError(ViolinError):
    """A control request is malformed or cannot be carried out."""
