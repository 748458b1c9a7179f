"""The systemd units in deploy/systemd, read as systemd reads them, for tests that run them.

:func:`service` gives a unit's commands and environment the way systemd would start it
(``Environment=``, then the ``EnvironmentFile=`` files overriding it, ``${VAR}`` and ``%i``
expanded in ``ExecStart=``), with the install paths mapped to this checkout, so that a test
runs exactly what a host would. :func:`procfile_argv` expands a Procfile entry the way a
Procfile runner does (through ``sh``), to compare the two.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .stack import ROOT, read_procfile

UNITS_DIR = ROOT / "deploy" / "systemd"
ENV_EXAMPLE = UNITS_DIR / "fleetchat.env.example"
INSTALL_DIR = "/opt/fleetchat"  # where the units expect the checkout and its .venv
CONFIG_DIR = "/etc/fleetchat"  # where they expect fleetchat.env
# What systemd gives every service before the unit's own settings.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

UNIT_FOR = {
    "release": "fleetchat-release.service",
    "web": "fleetchat-web.service",
    "worker": "fleetchat-worker@.service",
    "scheduler": "fleetchat-scheduler.service",
}


def read_unit(path: Path) -> dict[str, list[str]]:
    """``"Section.Key"`` -> its values in order (a key may repeat, as ``ExecStart=`` in a oneshot)."""
    entries: dict[str, list[str]] = {}
    section = ""
    text = re.sub(r"\\\n", " ", path.read_text())  # continuation lines
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def read_env_file(path: Path, commented: bool = False) -> dict[str, str]:
    """An ``EnvironmentFile=``'s assignments; with ``commented``, also the ``# KEY=value`` ones."""
    assignments = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if commented:
            line = re.sub(r"^#\s*(?=[A-Z][A-Z0-9_]*=)", "", line)
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        assignments[key.strip()] = value
    return assignments


def render_env(overrides: dict[str, str]) -> str:
    """The example environment file with ``overrides`` filled in. Each must be a key the example
    names (set or commented out), so that the example lists what a deployment has to set."""
    example = read_env_file(ENV_EXAMPLE, commented=True)
    unknown = sorted(set(overrides) - set(example))
    if unknown:
        raise AssertionError(f"{ENV_EXAMPLE.name} does not name {unknown}")
    merged = {**read_env_file(ENV_EXAMPLE), **overrides}
    return "".join(f"{key}={value}\n" for key, value in merged.items())


def expand(word: str, env: dict[str, str], instance: str) -> list[str]:
    """One word of ``ExecStart=`` as systemd expands it: ``%i``, ``${VAR}`` inside the word,
    and a whole-word ``$VAR`` split at whitespace."""

    def specifier(match: re.Match) -> str:
        if match.group(1) == "%":
            return "%"
        if match.group(1) == "i":
            return instance
        raise AssertionError(f"specifier %{match.group(1)} in {word!r} is not modelled here")

    word = re.sub(r"%(.)", specifier, word)
    whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
    if whole:
        return env.get(whole.group(1), "").split()
    return [re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)]


@dataclass
class Service:
    commands: list[list[str]]  # ExecStart=, in order
    env: dict[str, str]
    cwd: Path


def installed(path: str, config_dir: Path) -> str:
    """A path the units name, mapped from the install to this checkout and ``config_dir``."""
    return path.replace(INSTALL_DIR, str(ROOT)).replace(CONFIG_DIR, str(config_dir))


def service(entry: str, config_dir: Path, instance: str = "1") -> Service:
    """Procfile ``entry``'s unit as systemd would run it, with ``config_dir`` as /etc/fleetchat."""
    unit = read_unit(UNITS_DIR / UNIT_FOR[entry])
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
    for line in unit.get("Service.Environment", []):
        env.update(assignment.split("=", 1) for assignment in shlex.split(line))
    for line in unit.get("Service.EnvironmentFile", []):
        optional = line.startswith("-")
        path = Path(installed(line.lstrip("-"), config_dir))
        if path.exists() or not optional:
            env.update(read_env_file(path))
    commands = []
    for line in unit["Service.ExecStart"]:
        if line[:1] in "-@+!:":
            raise AssertionError(f"ExecStart prefix in {line!r} is not modelled here")
        argv = [part for word in shlex.split(line) for part in expand(word, env, instance)]
        commands.append([installed(argv[0], config_dir), *argv[1:]])
    return Service(commands, env, Path(installed(unit["Service.WorkingDirectory"][0], config_dir)))


def procfile_argv(entry: str, env: dict[str, str]) -> list[list[str]]:
    """Procfile ``entry``'s commands (split at ``&&``) as ``sh`` expands them under ``env``."""
    argvs = []
    for command in read_procfile()[entry].split("&&"):
        printed = subprocess.run(
            ["sh", "-c", f"printf '%s\\0' {command}"], env=env, check=True, capture_output=True, text=True
        ).stdout
        argvs.append(printed.split("\0")[:-1])
    return argvs
