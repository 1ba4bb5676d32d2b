"""The option table at work: a `Config` from the environment and the command line, which wins
(`load`); and the table written out, as `--help` (`help_text`) and as the configuration reference
page (`reference_markdown`). A bad value is a `ConfigError` naming the option, and the server
never starts half-configured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from karma.config import OPTIONS, OPTIONS_BY_FLAG, Config, Option


class ConfigError(Exception):
    """A bad option value; the CLI prints it on one line and exits with status 2."""


class HelpRequested(Exception):  # noqa: N818 - a signal to the CLI, not an error
    """``--help`` was given: print :func:`help_text` and exit 0."""


def _parse_value(option: Option, text: str, source: str) -> object:
    try:
        return option.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: invalid value {text!r}: {exc}") from None


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Build a Config from the environment, then the command line (which wins)."""
    values: dict[str, object] = {}
    for option in OPTIONS:
        if option.env in environ:
            values[option.attr] = _parse_value(option, environ[option.env], option.env)
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise HelpRequested
        flag, has_value, text = arg.partition("=")
        found = OPTIONS_BY_FLAG.get(flag)
        if found is None:
            raise ConfigError(f"{flag}: unknown option (see --help)")
        option = found
        if not has_value:
            if not args:
                raise ConfigError(f"{flag}: a value is required ({flag}=VALUE)")
            text = args.pop(0)
        values[option.attr] = _parse_value(option, text, flag)
    _settle_cluster(values)
    return Config(**values)  # type: ignore[arg-type]  # values come typed from OPTIONS


def _settle_cluster(values: dict[str, object]) -> None:
    """--group is --ha-cluster by its cluster-era name; --cluster needs etcd."""
    group = values.get("group")
    if group is not None:
        named = values.get("ha_cluster")
        if named is not None and named != group:
            raise ConfigError(
                f"--group={group} and --ha-cluster={named} name different groups"
                " (--ha-cluster is an alias of --group: give one)"
            )
        values["ha_cluster"] = group
    if values.get("cluster") is not None and values.get("ha_etcd") is None:
        raise ConfigError(
            "--cluster needs --ha-etcd: the shard map and every group's leader live in etcd"
        )


def help_text() -> str:
    lines = [
        "usage: karma-trio [serve] [OPTION=VALUE ...]",
        "",
        "Options (environment variable, default):",
    ]
    for option in OPTIONS:
        lines.append(f"  {option.flag}=VALUE")
        lines.append(f"      {option.help} [{option.env}, default {option.default_text}]")
    return "\n".join(lines)


def reference_markdown() -> str:
    """The configuration reference page, generated from OPTIONS."""
    rows = [
        "| Option | Environment | Default | Meaning |",
        "|---|---|---|---|",
    ]
    rows.extend(
        f"| `{option.flag}` | `{option.env}` | `{option.default_text}` | {option.help} |"
        for option in OPTIONS
    )
    return "\n".join(rows) + "\n"
