"""scripts/install_venv.py: pip's configured package sources, as uv gets them (``make``'s install of .venv)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "install_venv", Path(__file__).resolve().parents[1] / "scripts" / "install_venv.py")
install_venv = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(install_venv)


@pytest.mark.parametrize("config_list, flags, env", [
    ("", [], {}),
    # a machine's wheel folder and mirrors, one key per line as `pip config list` prints them
    ("global.find-links='/srv/wheels'\nglobal.extra-index-url='file:///srv/a/simple file:///srv/b/simple'\n",
     ["--extra-index-url", "file:///srv/a/simple", "--extra-index-url", "file:///srv/b/simple",
      "--find-links", "/srv/wheels"], {}),
    # PIP_* variables (":env:") beat [install], which beats [global]
    ("global.index-url='https://g.example/simple'\ninstall.index-url='https://i.example/simple'\n"
     ":env:.index-url='https://e.example/simple'\n", ["--index-url", "https://e.example/simple"], {}),
    ("install.index-url='https://i.example/simple'\nglobal.index-url='https://g.example/simple'\n",
     ["--index-url", "https://i.example/simple"], {}),
    # a list written over several lines in pip.conf (repr: "\n" inside the quotes)
    ("global.find-links='/srv/one\\n/srv/two'\n", ["--find-links", "/srv/one", "--find-links", "/srv/two"], {}),
    ("global.constraint='/etc/c.txt'\nglobal.trusted-host='mirror.local'\n",
     ["--constraint", "/etc/c.txt", "--allow-insecure-host", "mirror.local"], {}),
    ("global.no-index='true'\n", ["--no-index"], {}),
    ("global.no-index='false'\n", [], {}),
    ("global.cert='/etc/ca.pem'\n", [], {"SSL_CERT_FILE": "/etc/ca.pem"}),
    # what says nothing about sources, or cannot be read, is left out
    ("global.timeout='60'\nglobal.disable-pip-version-check='1'\nuser.find-links='/x'\nglobal.find-links=/bare\n",
     [], {}),
])
def test_pip_sources_become_uv_flags(config_list, flags, env):
    assert install_venv.uv_sources(config_list) == (flags, env)


def test_argument_groups_split_at_double_dash():
    assert install_venv.groups(["-e", ".[test]", "--", "--no-deps", "a==1", "--"]) == [
        ["-e", ".[test]"], ["--no-deps", "a==1"]]
