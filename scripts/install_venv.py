"""Install the project into the virtual environment that runs this script: uv, with the package sources pip is
configured with; pip itself if uv cannot.

Why uv: pip took ~2.5 minutes of one core for this project's ~170 packages (torch among them) on a 2-core machine,
every clean clone (``make test`` in CI starts from one); uv installs the same set in ~20 s. uv does not read pip's
configuration (``pip.conf``, ``PIP_*`` variables), where a machine may name package sources of its own: a folder of
wheels (a CPU build of torch), a mirror, a constraints file. Without them uv would resolve other files than pip does
there (a CUDA torch from PyPI, gigabytes). So the sources come from ``pip config list`` and go to uv as they are,
resolved as pip resolves them (``--index-strategy unsafe-best-match``: the best version across every source).

Usage (the Makefile's): ``python scripts/install_venv.py SPEC... [-- --no-deps SPEC...]``: every argument group
separated by ``--`` is one install, in order.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

#: uv, pinned like every other dependency
UV = "uv==0.13.8"
#: pip's settings that say where packages come from, and how uv takes each (a flag per value; None: a flag alone)
SOURCES = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
    "no-index": None,
}
#: pip's configuration sections, weakest first (environment variables override the files' [install], then [global])
SECTIONS = ("global", "install", ":env:")


def uv_sources(config_list: str) -> tuple[list[str], dict[str, str]]:
    """uv's flags and environment for the package sources in ``pip config list``'s output (``section.key='value'``
    lines, the value as Python's repr; a list is whitespace-separated, as pip reads it)."""
    settings: dict[str, tuple[int, str]] = {}
    for line in config_list.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if section not in SECTIONS or not value:
            continue
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue
        rank = SECTIONS.index(section)
        if name not in settings or settings[name][0] <= rank:
            settings[name] = (rank, str(value))
    flags: list[str] = []
    for name, flag in SOURCES.items():
        if name not in settings:
            continue
        value = settings[name][1]
        if flag is None:
            if value.strip().lower() in ("1", "true", "yes", "on"):
                flags.append(f"--{name}")
            continue
        for item in value.split():
            flags += [flag, item]
    env = {"SSL_CERT_FILE": settings["cert"][1]} if "cert" in settings else {}
    return flags, env


def pip_sources(python: str) -> tuple[list[str], dict[str, str]]:
    """:func:`uv_sources` of this environment's pip (its configuration files and ``PIP_*`` variables)."""
    return uv_sources(subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout)


def groups(args: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for arg in args:
        if arg == "--":
            out.append([])
        else:
            out[-1].append(arg)
    return [g for g in out if g]


def main(args: list[str]) -> int:
    python = sys.executable
    installs = groups(args)
    quiet = ["--quiet"]
    if subprocess.run([python, "-m", "pip", "install", *quiet, "--no-compile", UV]).returncode == 0:
        flags, env = pip_sources(python)
        uv = [python, "-m", "uv", "pip", "install", *quiet, "--python", python, "--index-strategy",
              "unsafe-best-match", *flags]
        env = {**os.environ, **env}
        if all(subprocess.run([*uv, *spec], env=env).returncode == 0 for spec in installs):
            return 0
        print("install_venv: uv could not install the project; installing with pip instead", file=sys.stderr)
    for spec in installs:
        if subprocess.run([python, "-m", "pip", "install", *quiet, "--no-compile", *spec]).returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
