"""The Docker files, checked by parsing (no Docker engine runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from wallet.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class TestCompose:
    def test_services_and_health_gated_start(self) -> None:
        """Kafka and PostgreSQL have health checks; the migrate job waits for both."""
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        services = compose["services"]
        assert {"kafka", "postgres", "migrate", "processor", "projector", "api"} <= services.keys()
        assert "healthcheck" in services["kafka"] and "healthcheck" in services["postgres"]
        for dependency in ("kafka", "postgres"):
            assert services["migrate"]["depends_on"][dependency]["condition"] == "service_healthy"
        for role in ("processor", "projector", "api"):
            gate = services[role]["depends_on"]["migrate"]["condition"]
            assert gate == "service_completed_successfully", role

    def test_environment_names_are_real_settings(self) -> None:
        """Every WALLET_* variable the compose file sets is a setting the code reads."""
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        fields = {f"WALLET_{name.upper()}" for name in Settings.model_fields}
        for name, service in compose["services"].items():
            for variable in service.get("environment", {}):
                if variable.startswith("WALLET_"):
                    assert variable in fields, f"{name}: {variable} is not a setting"


class TestDockerfile:
    def test_multi_stage_and_non_root(self) -> None:
        """The image is built in stages and runs as a non-root user."""
        text = (ROOT / "Dockerfile").read_text()
        assert text.count("FROM ") >= 2
        assert "USER wallet" in text
        assert 'ENTRYPOINT ["wallet"]' in text
