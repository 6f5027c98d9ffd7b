"""Exim's words, pure: its list syntax, the listeners ``exim -bP`` describes, and the lines ``setup exim`` writes."""

from __future__ import annotations

from pathlib import Path

from certkeeper.mailserver.exim import (
    EximConfig,
    check_applied,
    exim_list,
    exim_listeners,
    option_value,
    plan_exim,
    replace_option,
)


def test_exim_lists_take_colons_doubled_colons_and_a_chosen_separator() -> None:
    assert exim_list("25 : 465 : 587") == ["25", "465", "587"]
    assert exim_list("<; 127.0.0.1 ; ::1") == ["127.0.0.1", "::1"]
    assert exim_list("::::1 : 127.0.0.1") == ["::1", "127.0.0.1"]
    assert exim_list("") == []


def test_465_outside_tls_on_connect_ports_is_a_plain_smtp_submissions_listener() -> None:
    settings = {"daemon_smtp_ports": "smtp : 465 : submission", "tls_on_connect_ports": "",
                "local_interfaces": "<; 192.0.2.25", "tls_certificate": "/c.pem", "tls_privatekey": "/k.pem"}
    listeners = exim_listeners(EximConfig(settings))
    assert [(x.port, x.role, x.protocol, x.host) for x in listeners] == [
        (25, "smtp", "smtp", "192.0.2.25"), (465, "submissions", "smtp", "192.0.2.25"),
        (587, "submission", "smtp", "192.0.2.25")]
    assert listeners[0].tls[0].files == (Path("/c.pem"), Path("/k.pem"))


def test_expanded_certificate_paths_are_not_judged_as_files() -> None:
    settings = {"tls_certificate": "/etc/exim4/${tls_in_sni}.crt", "daemon_smtp_ports": "25"}
    assert exim_listeners(EximConfig(settings))[0].tls == ()


MAIN = """\
exim_path = /usr/sbin/exim4
daemon_smtp_ports = 2525 : \\
   2526
tls_advertise_hosts = MAIN_TLS_ADVERTISE_HOSTS
begin acl
daemon_smtp_ports = not an option in the acl section
"""


def test_options_the_main_file_sets_are_rewritten_in_place_others_go_to_the_macros_file() -> None:
    config = EximConfig({}, Path("/etc/exim/exim.conf"))
    plan = plan_exim(config, [Path("/s/certs/mail/current")], "mail", smtp_port=25, smtps_port=465,
                     submission_port=587, main_text=MAIN)
    assert plan.macros_file == Path("/etc/exim/exim4.conf.localmacros")
    assert "MAIN_TLS_CERTIFICATE = /s/certs/mail/current/fullchain.pem\n" in plan.macros
    assert "MAIN_TLS_PRIVATEKEY = /s/certs/mail/current/privkey.pem\n" in plan.macros
    assert "tls_on_connect_ports = 465\n" in plan.macros and "daemon_smtp_ports" not in plan.macros
    assert plan.main_text is not None
    assert plan.main_text.startswith("# certkeeper setup exim: local macros first\n"
                                     ".include_if_exists /etc/exim/exim4.conf.localmacros\n")
    assert "daemon_smtp_ports = 25 : 465 : 587\ntls_advertise_hosts" in plan.main_text
    assert plan.main_text.endswith("daemon_smtp_ports = not an option in the acl section\n")
    assert plan.main_changes == (".include_if_exists /etc/exim/exim4.conf.localmacros  (as the first line)",
                                 "daemon_smtp_ports = 25 : 465 : 587")


def test_the_administrators_macros_are_kept_and_certkeepers_replaced_in_place() -> None:
    existing = "MAIN_TLS_CERTIFICATE = /etc/exim4/exim.crt\nMAIN_LOCAL_DOMAINS = @:localhost\n"
    plan = plan_exim(EximConfig({}), [Path("/c")], "mail", smtp_port=25, smtps_port=465, submission_port=587,
                     macros_text=existing)
    assert plan.macros.startswith("MAIN_TLS_CERTIFICATE = /c/fullchain.pem\nMAIN_LOCAL_DOMAINS = @:localhost\n")
    assert plan.macros.count("MAIN_TLS_CERTIFICATE") == 1 and "MAIN_TLS_PRIVATEKEY = /c/privkey.pem\n" in plan.macros


def test_a_main_file_naming_its_own_files_gets_certkeepers_in_place() -> None:
    main = "tls_certificate = /etc/ssl/mail.crt\ntls_privatekey = /etc/ssl/mail.key\nbegin acl\n"
    plan = plan_exim(EximConfig({}, Path("/etc/exim/exim.conf")), [Path("/c")], "mail", smtp_port=25,
                     smtps_port=465, submission_port=587, main_text=main)
    assert plan.main_text is not None
    assert "tls_certificate = /c/fullchain.pem\ntls_privatekey = /c/privkey.pem\nbegin acl\n" in plan.main_text


def test_two_key_types_become_exim_lists_of_files() -> None:
    plan = plan_exim(EximConfig({}), [Path("/c/ecdsa"), Path("/c/rsa")], "mail", smtp_port=25, smtps_port=465,
                     submission_port=587)
    assert "MAIN_TLS_CERTIFICATE = /c/ecdsa/fullchain.pem : /c/rsa/fullchain.pem\n" in plan.macros
    assert plan.main_text is None and plan.macros_file == Path("/etc/exim4/exim4.conf.localmacros")


def test_an_applied_plan_is_checked_against_what_exim_bp_shows() -> None:
    expected = {"tls_certificate": "/c/fullchain.pem", "daemon_smtp_ports": "25 : 465 : 587"}
    shown = EximConfig({"tls_certificate": "/etc/exim4/exim.crt", "daemon_smtp_ports": "25:465:587"})
    assert check_applied(shown, expected) == ["tls_certificate is '/etc/exim4/exim.crt', not '/c/fullchain.pem'"]


def test_option_lines_are_found_only_in_the_main_section() -> None:
    assert option_value(MAIN, "daemon_smtp_ports") == "2525 : 2526"
    assert option_value(MAIN, "tls_on_connect_ports") is None
    assert replace_option("a = 1\nbegin acl\na = 2\n", "a", "3") == "a = 3\nbegin acl\na = 2\n"
