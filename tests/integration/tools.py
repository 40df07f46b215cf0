"""Machine tools some tests need (PostgreSQL's own server build, psql, Node.js): installed from
Debian's packages where they are missing, so that CI runs these tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

import pytest

APT_TIMEOUT_S = 900


def require(present: Callable[[], bool], packages: list[str], what: str) -> None:
    """Make sure `present()` holds: install `packages` with apt-get when it does not.

    Only under CI, as root, is anything installed (a developer's machine is theirs to change);
    there a tool that still cannot be had fails the test. Elsewhere the test is skipped with
    the command that would install it.
    """
    if present():
        return
    in_ci = bool(os.environ.get("CI"))
    if not in_ci:
        pytest.skip(f"{what} is not installed (apt-get install {' '.join(packages)})")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        for argv in (["apt-get", "update", "-q"], install):
            subprocess.run(argv, env=env, capture_output=True, timeout=APT_TIMEOUT_S, check=False)
    if not present():
        pytest.fail(f"{what} is missing and apt-get could not install {' '.join(packages)}")
