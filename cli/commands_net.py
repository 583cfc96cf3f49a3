"""Network commands: daemon, id, ping (and later peers, providers)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
