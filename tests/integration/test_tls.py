"""TLS to PostgreSQL through the URL alone: verified against our CA, refused against another."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from foundation.settings import Settings
from storage.db import connection
from tests.integration.processes import run_wallet
from tests.integration.tools import require
from wallet.devstack import EmbeddedPostgres


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[str, Path]]:
    """A private PostgreSQL serving TLS with a certificate for 127.0.0.1 from a test CA;
    yields its base URL and the CA file.

    The embedded wheel's build has no TLS ("SSL is not supported by this build"), so this
    runs the machine's own PostgreSQL binaries (Debian's layout) on a data folder of ours.
    """

    def builds() -> list[Path]:
        return sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))

    require(lambda: bool(builds()), ["postgresql"], "a PostgreSQL server build with TLS")
    folder = Path(tempfile.mkdtemp(prefix="wallet-tls-"))
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_file = folder / "chain.pem", folder / "key.pem", folder / "ca.pem"
    issued.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    ca_file.chmod(0o644)
    server = EmbeddedPostgres(
        folder / "pg", durable=False, tls_files=(chain, key), bin_dir=builds()[-1].parent
    )
    try:
        yield server.start(), ca_file
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _settings(url: str) -> Settings:
    return Settings(_env_file=None, database_url=url, kafka_bootstrap="127.0.0.1:9")  # type: ignore[call-arg]


class TestPostgresTls:
    async def test_verify_full_from_the_url_gives_an_encrypted_connection(
        self, tls_server: tuple[str, Path]
    ) -> None:
        """sslmode=verify-full with sslrootcert in the URL: the server sees a TLS session."""
        url, ca_file = tls_server
        verified = _settings(f"{url}?sslmode=verify-full&sslrootcert={ca_file}")
        async with connection(verified) as conn:
            row = await conn.fetchrow(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
        assert row is not None and row["ssl"] is True and row["version"].startswith("TLS")

    async def test_a_certificate_from_another_ca_is_refused(
        self, tls_server: tuple[str, Path], tmp_path: Path
    ) -> None:
        """Verification is real: trusting a different CA, the connection fails."""
        url, _ = tls_server
        other_ca = tmp_path / "other.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connection(_settings(f"{url}?sslmode=verify-full&sslrootcert={other_ca}")):
                pass

    def test_the_cli_migrates_over_tls(self, tls_server: tuple[str, Path]) -> None:
        """`wallet migrate` with the TLS URL in WALLET_DATABASE_URL applies the schema."""
        url, ca_file = tls_server
        migrated = run_wallet(_settings(f"{url}?sslmode=verify-full&sslrootcert={ca_file}"),
                              "migrate")  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        assert "001_ledger.sql" in migrated.stdout
