"""The test bed's Exim 4.96 (Debian's, unpacked) serves TLS on three loopback listeners, and loads its
certificate the way certkeeper has to live with: preloaded, not re-read when ``current`` flips, re-read on SIGHUP."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from certkeeper.testbed.exim import HOSTNAME, Exim, share_with_exim
from certkeeper.testbed.server import ServerStartError, make_traversable

pytestmark = pytest.mark.testbed


def served_names(exim: Exim, listener: str) -> list[str]:
    """The DNS names of the certificate a new connection to ``listener`` gets (verified against the test CA)."""
    context = ssl.create_default_context(cafile=str(exim.ca_file))
    context.check_hostname = False
    port = exim.ports[listener]
    smtp: smtplib.SMTP
    if listener == "smtps":
        smtp = smtplib.SMTP_SSL("127.0.0.1", port, timeout=5, context=context)
    else:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=5)
        smtp.starttls(context=context)
    with smtp:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        der = smtp.sock.getpeercert(binary_form=True)
    assert der is not None
    names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return names.value.get_values_for_type(x509.DNSName)


def flip(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` by one atomic rename, as certkeeper flips ``current``."""
    staged = link.with_name(link.name + ".new")
    staged.symlink_to(target)
    staged.rename(link)


def test_exim_serves_tls_on_smtp_smtps_and_submission(exim_factory: Callable[..., Exim]) -> None:
    exim = exim_factory()
    assert exim.listeners == ("smtp", "smtps", "submission")
    for listener in exim.listeners:
        assert HOSTNAME in served_names(exim, listener)


def test_flipping_current_is_served_only_after_sighup(exim_factory: Callable[..., Exim], tmp_path: Path) -> None:
    """Exim 4.96 preloads the pair and watches the resolved files, not the symlink: a flip needs SIGHUP."""
    exim = exim_factory(start=False)
    make_traversable(tmp_path)  # the daemon runs as Debian-exim
    for version in ("v1", "v2"):
        key_file, _ = exim.ca.issue([f"{version}.example.test"]).write(tmp_path / version, "server")
        share_with_exim(key_file)
    (tmp_path / "current").symlink_to("v1")
    exim.use_certificate(tmp_path / "current" / "server.fullchain.pem", tmp_path / "current" / "server.key")
    exim.start()
    assert served_names(exim, "smtps") == ["v1.example.test"]

    flip(tmp_path / "current", "v2")
    assert served_names(exim, "smtps") == ["v1.example.test"]  # new connection, old preloaded pair

    exim.reload()
    for listener in exim.listeners:
        assert served_names(exim, listener) == ["v2.example.test"]


def test_a_fresh_exim_offers_starttls_with_a_self_signed_certificate_of_its_own(
        exim_factory: Callable[..., Exim]) -> None:
    """Debian's template without MAIN_TLS_ENABLE leaves tls_certificate unset; Exim 4.96 makes up a certificate."""
    exim = exim_factory(listeners=["smtp"], tls=False)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", exim.ports["smtp"], timeout=5) as smtp:
        smtp.starttls(context=context)
        assert isinstance(smtp.sock, ssl.SSLSocket)
        der = smtp.sock.getpeercert(binary_form=True)
    assert der is not None
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.issuer == certificate.subject  # self-signed, not from the test CA


def test_exim_broken_config_fails_with_its_message(exim_factory: Callable[..., Exim]) -> None:
    exim = exim_factory(start=False)
    exim.macros_file.write_text("no_such_option = 1\n")
    with pytest.raises(ServerStartError, match=r'(?s)Exim did not start.*main option "no_such_option" unknown'):
        exim.start()


def test_sighup_with_the_compiled_in_exim_path_kills_an_unpacked_exim(exim_factory: Callable[..., Exim]) -> None:
    """Why the test bed sets exim_path, and why the exim hook checks it: the re-exec target must exist."""
    exim = exim_factory(exim_path=Path("/usr/sbin/exim4"))
    with pytest.raises(ServerStartError, match="did not come back after SIGHUP"):
        exim.reload()
    assert exim.pid is None
    logs = "".join(path.read_text() for path in exim.log_dir.iterdir())
    assert "/usr/sbin/exim4" in logs and "No such file or directory" in logs

