"""Content commands: add, share, fetch, ls, verify, gc."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
