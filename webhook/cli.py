"""The ``coredump`` command line. Each area registers its own commands from its module.

Areas are imported lazily so that ``coredump serve`` does not pay for the agent's imports and
a broken optional area never takes the whole CLI down.
"""

from __future__ import annotations

import importlib

import click

from webhook import __version__

#: command name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "certs": "webhook.certs.commands:certs",
    "serve": "webhook.server.commands:serve",
    "review": "webhook.admission.commands:review",
    "agent": "webhook.agent.commands:agent",
    "list": "webhook.inspect.commands:list_cores",
    "get": "webhook.inspect.commands:get_core",
    "debug": "webhook.inspect.debug_command:debug",
    "gcore": "webhook.inspect.gcore_command:gcore",
    "demo": "webhook.demo.command:demo",
    "page": "webhook.inspect.page_command:page",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None  # area not built in this version
            raise
        return getattr(module, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coredump")
def main() -> None:
    """coredump-webhook: every crash of an annotated pod leaves a named, findable core dump."""


if __name__ == "__main__":  # pragma: no cover
    main()
