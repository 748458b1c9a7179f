"""The systemd units in deploy/systemd run what the Procfile runs, and systemd accepts them.

tests/test_multihost.py runs the units' commands on several hosts; these checks hold them to
the Procfile (the same program and arguments, the same defaults) and to systemd's own parser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .stack import ROOT, read_procfile
from .systemd_units import (
    ENV_EXAMPLE,
    SYSTEMD_PATH,
    UNIT_FOR,
    UNITS_DIR,
    installed,
    procfile_argv,
    read_env_file,
    render_env,
    service,
)

# Variables that are not Django settings: the units' and the Procfile's own, and uvicorn's.
PROCESS_VARIABLES = {
    "BIND_ADDRESS",
    "PORT",
    "WEB_CONCURRENCY",
    "WEB_GRACEFUL_SHUTDOWN_S",
    "FORWARDED_ALLOW_IPS",
}


@pytest.mark.parametrize("entry", sorted(UNIT_FOR))
@pytest.mark.parametrize("env_file", ["empty", "example"])
def test_each_unit_runs_its_procfile_entry(tmp_path, entry, env_file):
    """The unit's program is the Procfile's from the install's .venv, with the same arguments,
    both with nothing set (the unit's defaults are the Procfile's) and with the example's values."""
    (tmp_path / "fleetchat.env").write_text(
        "" if env_file == "empty" else render_env({"WEB_CONCURRENCY": "3"})
    )
    unit = service(entry, tmp_path)
    shell_env = {"PATH": SYSTEMD_PATH} if env_file == "empty" else unit.env
    expected = procfile_argv(entry, shell_env)
    assert len(unit.commands) == len(expected), (unit.commands, expected)
    for command, procfile_command in zip(unit.commands, expected, strict=True):
        assert command[0] == str(ROOT / ".venv" / "bin" / procfile_command[0])
        assert command[1:] == procfile_command[1:]
    assert unit.cwd == ROOT


def test_the_environment_example_names_only_real_settings():
    """A misspelt name in the example would be set and silently ignored on every host."""
    settings_source = (ROOT / "project" / "settings.py").read_text()
    read_by_settings = set(
        re.findall(r'(?:env_int|env_bool|env_list|os\.environ\.get)\(\s*"([A-Z0-9_]+)"', settings_source)
    )
    named = set(read_env_file(ENV_EXAMPLE, commented=True))
    unknown = (
        named - read_by_settings - PROCESS_VARIABLES - {name for name in named if name.startswith("UVICORN_")}
    )
    assert not unknown, f"{ENV_EXAMPLE.name} names what nothing reads: {sorted(unknown)}"
    # And every variable a unit's command line uses has a default in the unit or a line in the example.
    for entry in UNIT_FOR:
        for word in re.findall(r"\$\{?([A-Z_]+)", " ".join(read_procfile()[entry].split())):
            assert word in named, (
                f"the Procfile's {entry} reads {word}, which {ENV_EXAMPLE.name} does not name"
            )


def systemd_verify(units_dir: Path, names: list[str]) -> str:
    """What ``systemd-analyze verify`` says about ``names`` (instances of templates allowed),
    read from ``units_dir``. Empty when it has nothing to say: it exits 0 on unknown keys and
    values it cannot parse, so its words are what count."""
    result = subprocess.run(
        ["systemd-analyze", "verify", *names],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units_dir}:"},  # the trailing colon keeps systemd's own
    )
    return (result.stdout + result.stderr).strip() or (
        "" if result.returncode == 0 else f"exit {result.returncode}"
    )


def rendered_units(tmp_path: Path, change: tuple[str, str] | None = None) -> list[str]:
    """The units with this checkout as the install and ``tmp_path`` as /etc/fleetchat."""
    (tmp_path / "fleetchat.env").write_text(render_env({}))
    names = []
    for path in sorted(UNITS_DIR.glob("*.service")):
        text = installed(path.read_text(), tmp_path)
        if change is not None:
            text = text.replace(*change)
        (tmp_path / path.name).write_text(text)
        names.append(path.name.replace("@.", "@1."))
    return names


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and os.environ.get("CI") != "true",
    reason="systemd-analyze not found (Debian's systemd package; .ci/run installs it)",
)


@needs_systemd_analyze
def test_systemd_accepts_the_units(tmp_path):
    assert systemd_verify(tmp_path, rendered_units(tmp_path)) == ""


@needs_systemd_analyze
@pytest.mark.parametrize(
    "change", [("Type=exec", "Type=exce"), ("KillMode=mixed", "KillMod=mixed"), ("/.venv/bin/", "/venv/bin/")]
)
def test_systemd_verify_catches_a_broken_unit(tmp_path, change):
    """The check above can fail: a misspelt value, a misspelt key, a program that is not there."""
    assert systemd_verify(tmp_path, rendered_units(tmp_path, change)) != ""
