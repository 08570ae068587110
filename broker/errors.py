"""Errors a user or a peer can act on.

Every error a person can cause (a wrong config key, a missing trace, a malformed line)
is a :class:`UserError`: the command line prints its message on one line and exits
with status 2, without a traceback. The message says what is wrong and what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error caused by an input a user or peer can correct."""

    exit_status = 2


class ConfigError(UserError):
    """A configuration or policy file is wrong (unknown key, wrong type, bad value)."""


class TraceError(UserError):
    """A workload trace is missing or malformed."""
