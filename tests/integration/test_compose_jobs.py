"""The compose stack's database set-up, run for real as far as this machine allows (no Docker
engine): the postgres image's init script and the migrate job's exact command line, on a
private PostgreSQL; then the write path as the role they created and granted."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from foundation.settings import Settings
from tests.integration.helpers import client_for, command, running_processor
from tests.integration.processes import settings_env
from tests.integration.tools import require
from wallet.devstack import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, dict]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


class TestComposeDatabaseJobs:
    async def test_init_script_and_migrate_job_make_a_working_service_role(
        self, own_postgres: tuple[EmbeddedPostgres, Settings]
    ) -> None:
        """The init script creates the role the services' URL names; the migrate job's command
        (migrate, grant, topics) succeeds as the owner; a processor logged in as that role
        then decides a command."""
        require(lambda: shutil.which("psql") is not None, ["postgresql-client"],
                "psql (the PostgreSQL client)")  # fmt: skip
        _, owner = own_postgres
        assert owner.database_url is not None
        server = urlsplit(owner.database_url)
        services = _compose()
        init_env = os.environ | {
            "PGHOST": server.hostname or "", "PGPORT": str(server.port),
            "POSTGRES_USER": server.username or "", "POSTGRES_DB": "wallet",
            "SERVICE_ROLE_PASSWORD": "from-the-test",
        }  # fmt: skip
        created = _run(["sh", str(ROOT / "deploy" / "postgres-service-role.sh")], init_env)
        assert created.returncode == 0, created.stderr

        job = services["migrate"]["entrypoint"]
        bin_dir = str(Path(sys.executable).parent)  # where `wallet` is installed
        job_env = settings_env(owner) | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
        migrated = await asyncio.to_thread(_run, job, job_env)
        assert migrated.returncode == 0, migrated.stderr
        assert "wallet_service: granted" in migrated.stdout

        role = urlsplit(services["processor"]["environment"]["WALLET_DATABASE_URL"]).username
        url = owner.database_url.replace(f"//{server.username}@", f"//{role}@")
        as_service = owner.model_copy(update={"database_url": url})
        async with running_processor(as_service), client_for(as_service) as client:
            reply = await client.request(command("top_up", "compose", 12), timeout_s=60)
        assert reply.status == "accepted" and reply.balance == 12
