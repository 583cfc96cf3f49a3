"""Entry point of the `fileshare` command.

Every failure a user can act on is a ``FileshareError``: printed as one line on stderr, exit code 1.
``--debug`` shows the traceback instead. Exit codes: 0 success, 1 error, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from fileshare.errors import FileshareError

from .common import common_options


class FileshareGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FileshareError as exc:
            if ctx.find_root().ensure_object(dict).get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:
            if ctx.find_root().ensure_object(dict).get("debug"):
                raise
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


EPILOG = """\b
Exit codes:
  0    success
  1    error (one line on stderr; --debug shows the traceback), including
       `verify` finding bad blocks, `stat` of a CID not in the store and
       `providers` finding none
  2    usage error (bad option or argument)
  130  interrupted (Ctrl-C)

\b
When `fileshare daemon` runs on the repository, add, share, fetch, ls, pin,
unpin, gc, stat and status go through its control API (<repo>/daemon.json,
<repo>/api.token); otherwise they run in this process.
Config file: $FILESHARE_CONFIG or ~/.config/fileshare/config.toml (TOML:
repo, listen, bootstrap, topics, api, gateway, dht, mdns, [limits]).
Shell completion: eval "$(_FILESHARE_COMPLETE=bash_source fileshare)"
(zsh_source / fish_source for zsh and fish).
"""


@click.group(
    cls=FileshareGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="fileshare")
@common_options
def cli() -> None:
    """Share and fetch files over a libp2p/IPFS-compatible peer-to-peer network."""


def _register() -> None:
    from . import commands_content, commands_daemon, commands_net, commands_sync

    for module in (commands_content, commands_net, commands_sync, commands_daemon):
        for command in module.COMMANDS:
            cli.add_command(command)


def main() -> None:
    logging.basicConfig(
        level=logging.DEBUG if "--debug" in sys.argv else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _register()
    cli(prog_name="fileshare")


if __name__ == "__main__":
    main()
