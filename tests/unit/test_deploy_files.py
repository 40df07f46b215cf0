"""The Docker files, checked by parsing (no Docker engine runs here): every command they run,
every variable they set and every port they probe is one the code really has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from foundation.settings import Settings
from wallet.cli import main as cli
from wallet.embedded_kafka import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("processor", "projector", "api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _wallet_commands(service: dict[str, Any]) -> list[list[str]]:
    """The `wallet ...` command lines a service runs (through the image's entrypoint or sh)."""
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return [service["command"]]
    assert entrypoint[:2] == ["sh", "-c"], entrypoint
    lines = [shlex.split(part) for part in entrypoint[2].split("&&")]
    assert all(line[0] == "wallet" for line in lines), lines
    return [line[1:] for line in lines]


def _resolve(argv: list[str]) -> None:
    """Fail unless the wallet CLI knows the (sub)command and its options."""
    context = cli.make_context("wallet", list(argv), resilient_parsing=False)
    with context:
        name, command, rest = cli.resolve_command(context, list(argv))
        assert command is not None, argv
        command.make_context(name or "", rest, parent=context)


class TestCompose:
    def test_services_and_health_gated_start(self, compose: dict[str, Any]) -> None:
        """Kafka and PostgreSQL have health checks; the migrate job waits for both, every role
        waits for the migrate job to succeed."""
        services = compose["services"]
        assert set(services) == {"kafka", "postgres", "migrate", *ROLES}
        assert "healthcheck" in services["kafka"] and "healthcheck" in services["postgres"]
        for dependency in ("kafka", "postgres"):
            assert services["migrate"]["depends_on"][dependency]["condition"] == "service_healthy"
        for role in ROLES:
            gate = services[role]["depends_on"]["migrate"]["condition"]
            assert gate == "service_completed_successfully", role
            assert services[role]["restart"] == "unless-stopped", role

    def test_commands_are_real_cli_commands(self, compose: dict[str, Any]) -> None:
        """Each role's command, and each step of the migrate job, parses with the real CLI."""
        services = compose["services"]
        for name in ("migrate", *ROLES):
            for argv in _wallet_commands(services[name]):
                _resolve(argv)
        assert [argv[0] for argv in _wallet_commands(services["migrate"])] == [
            "migrate", "grant", "topics"]  # fmt: skip
        assert {services[role]["command"][0] for role in ROLES} == set(ROLES)

    def test_environment_names_are_real_settings(self, compose: dict[str, Any]) -> None:
        """Every WALLET_* variable the compose file sets is a setting the code reads, and its
        value passes the settings' validation."""
        fields = {f"WALLET_{name.upper()}" for name in Settings.model_fields}
        for name, service in compose["services"].items():
            env = service.get("environment", {})
            wallet_env = {k: v for k, v in env.items() if k.startswith("WALLET_")}
            unknown = set(wallet_env) - fields
            assert not unknown, f"{name}: {unknown} are not settings"
            values = {k[len("WALLET_") :].lower(): v for k, v in wallet_env.items() if k in fields}
            Settings(**values)

    def test_services_log_in_as_the_granted_role(self, compose: dict[str, Any]) -> None:
        """The roles use the service role the init script creates and the migrate job grants;
        only the migrate job uses the tables' owner."""
        services = compose["services"]
        owner = services["postgres"]["environment"]["POSTGRES_USER"]
        script = (ROOT / "deploy" / "postgres-service-role.sh").read_text()
        created = re.search(r"CREATE ROLE (\w+) LOGIN", script)
        assert created is not None
        granted = _wallet_commands(services["migrate"])[1]
        assert granted == ["grant", created.group(1)]
        for role in ROLES:
            url = urlsplit(services[role]["environment"]["WALLET_DATABASE_URL"])
            assert url.username == created.group(1) != owner, role
        migrate_url = urlsplit(services["migrate"]["environment"]["WALLET_DATABASE_URL"])
        assert migrate_url.username == owner
        mounts = services["postgres"]["volumes"]
        assert any(m.startswith("./deploy/postgres-service-role.sh:/docker-entrypoint-initdb.d/")
                   for m in mounts)  # fmt: skip

    def test_workers_serve_health_and_metrics_where_the_image_probes(
        self, compose: dict[str, Any], dockerfile: str
    ) -> None:
        """The processor and projector listen for /metrics and /health on all interfaces of
        their container at a port the image exposes; the API on its own port."""
        exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split())  # type: ignore[union-attr]
        for role in ("processor", "projector"):
            env = compose["services"][role]["environment"]
            assert env["WALLET_METRICS_HOST"] == "0.0.0.0" and env["WALLET_METRICS_PORT"] in exposed
            assert "healthcheck" not in compose["services"][role]  # the image's applies
        api_env = compose["services"]["api"]["environment"]
        assert api_env["WALLET_API_PORT"] in exposed and "WALLET_METRICS_PORT" not in api_env
        assert compose["services"]["migrate"]["healthcheck"] == {"disable": True}

    def test_ports_only_where_a_user_needs_them(self, compose: dict[str, Any]) -> None:
        """The API is published; Kafka only on loopback for local producers; nothing else."""
        published = {n: s["ports"] for n, s in compose["services"].items() if "ports" in s}
        assert published == {"api": ["8080:8080"], "kafka": ["127.0.0.1:19092:19092"]}

    def test_kafka_is_the_release_the_tests_run(self, compose: dict[str, Any]) -> None:
        """Compose runs the same Apache Kafka release as the embedded broker of the tests."""
        image = compose["services"]["kafka"]["image"]
        assert image == f"apache/kafka:{KAFKA_VERSION}"

    def test_kafka_never_creates_topics_on_demand(self, compose: dict[str, Any]) -> None:
        """Topic auto-creation is off: a reply_to from a producer must not create topics."""
        environment = compose["services"]["kafka"]["environment"]
        assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"

    def test_two_processors_and_named_volumes(self, compose: dict[str, Any]) -> None:
        """Two processors share the partitions; the data lives in named volumes."""
        services = compose["services"]
        assert services["processor"]["deploy"]["replicas"] == 2
        assert set(compose["volumes"]) == {"kafka-data", "postgres-data"}
        for name, volume in (("kafka", "kafka-data"), ("postgres", "postgres-data")):
            assert any(v.startswith(f"{volume}:") for v in services[name]["volumes"])


class TestDockerfile:
    def test_multi_stage_non_root_without_build_tools(self, dockerfile: str) -> None:
        """Built in stages; the final stage installs wheels only and runs as a non-root uid."""
        stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
        assert len(stages) == 2 and stages[0].split()[2] == "build"
        final = stages[-1]
        assert "USER 10001" in final and "--uid 10001" in final
        assert not re.search(r"apt-get|gcc|build-essential|COPY \. ", final)
        assert 'ENTRYPOINT ["wallet"]' in final

    def test_healthcheck_runs_the_real_command(self, dockerfile: str) -> None:
        """HEALTHCHECK runs `wallet healthcheck`, which the CLI has, with its options."""
        match = re.search(r"^HEALTHCHECK .*?CMD (\[[^\]]*\])", dockerfile, re.M | re.S)
        assert match is not None
        argv = yaml.safe_load(match.group(1))
        assert argv[0] == "wallet"
        _resolve(argv[1:])
