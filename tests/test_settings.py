import logging
import os

import pytest

import towtruck


def test_defaults_are_the_node_projects() -> None:
    settings = towtruck.Settings()
    assert settings.max_actors == 1000
    assert settings.max_inactivity == 60
    assert settings.gc_interval == 10
    assert settings.call_timeout == 30
    assert settings.host == "127.0.0.1"


def test_precedence_keywords_over_flags_over_environment() -> None:
    environ = {"TOWTRUCK_MAX_ACTORS": "5", "TOWTRUCK_CALL_TIMEOUT": "2.5", "PATH": "/bin"}
    flags = {"max_actors": "7", "gc_interval": None}
    settings = towtruck.Settings.load(environ=environ, flags=flags, gc_interval=3)
    assert settings.max_actors == 7
    assert settings.call_timeout == 2.5
    assert settings.gc_interval == 3.0


def test_peers_from_environment_and_flags() -> None:
    settings = towtruck.Settings.load(environ={"TOWTRUCK_PEERS": "a:1, b.example:2"})
    assert settings.peers == ("a:1", "b.example:2")
    settings = towtruck.Settings.load(flags={"peers": ["[::1]:9000"]})
    assert settings.peers == ("[::1]:9000",)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"environ": {"TOWTRUCK_MAX_ACTORS": "lots"}}, "TOWTRUCK_MAX_ACTORS"),
        ({"flags": {"max_actors": "0"}}, "--max-actors"),
        ({"flags": {"call_timeout": "-1"}}, "--call-timeout"),
        ({"flags": {"port": "70000"}}, "--port"),
        ({"flags": {"peers": ["no-port"]}}, "--peer"),
        ({"environ": {"TOWTRUCK_WORKERS": "some"}}, "TOWTRUCK_WORKERS"),
        ({"max_body": 1.5}, "max_body"),
        ({"gc_interval": float("nan")}, "gc_interval"),
        ({"debug": "maybe"}, "debug"),
        ({"host": ""}, "host"),
    ],
)
def test_bad_values_name_their_source(source: dict, expected: str) -> None:
    with pytest.raises(towtruck.SettingsError, match=f"^{expected}: "):
        towtruck.Settings.load(**source)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(towtruck.SettingsError, match="max_actor: unknown setting"):
        towtruck.Settings.load(max_actor=3)
    with pytest.raises(towtruck.SettingsError, match="nope: unknown setting"):
        towtruck.Settings().replace(nope=1)


def test_unknown_variables_are_ignored_with_a_warning_naming_the_closest_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"TOWTRUCK_MAX_ACTOR": "3", "TOWTRUCK_BUILD_ID": "1.2", "TOWTRUCK_PORT": "81"}
    settings = towtruck.Settings.load(environ=environ)
    assert settings.max_actors == 1000
    assert settings.port == 81
    warnings = {r.getMessage() for r in caplog.records if r.name == "towtruck"}
    assert warnings == {
        "TOWTRUCK_MAX_ACTOR is not a towtruck setting: ignored (did you mean TOWTRUCK_MAX_ACTORS?)",
        "TOWTRUCK_BUILD_ID is not a towtruck setting: ignored",
    }
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_an_unknown_variable_is_warned_about_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for _ in range(3):
        towtruck.Settings.load(environ={"TOWTRUCK_GC_INTERVALS": "3"})
    [warning] = [r.getMessage() for r in caplog.records]
    assert "did you mean TOWTRUCK_GC_INTERVAL?" in warning


def test_log_level_and_blocked_warning_are_settings() -> None:
    environ = {"TOWTRUCK_LOG_LEVEL": "WARNING", "TOWTRUCK_BLOCKED_WARNING": "0.5"}
    settings = towtruck.Settings.load(environ=environ)
    assert settings.log_level == "warning"
    assert settings.blocked_warning == 0.5
    assert towtruck.Settings().log_level == "info"
    assert towtruck.Settings().blocked_warning == 1.0
    with pytest.raises(towtruck.SettingsError, match=r"^TOWTRUCK_LOG_LEVEL: expected one of"):
        towtruck.Settings.load(environ={"TOWTRUCK_LOG_LEVEL": "loud"})


def test_settings_are_frozen_and_checked_when_built_directly() -> None:
    settings = towtruck.Settings(max_actors=3)
    with pytest.raises(AttributeError):
        settings.max_actors = 4  # type: ignore[misc]
    with pytest.raises(towtruck.SettingsError, match="mailbox_size"):
        towtruck.Settings(mailbox_size=0)
    assert settings.replace(max_actors=9).max_actors == 9


def test_flags_parse_booleans() -> None:
    settings = towtruck.Settings.load(environ={"TOWTRUCK_DEBUG": "yes"}, access_log=True)
    assert settings.debug is True
    assert settings.access_log is True


def test_workers_may_be_auto_anywhere() -> None:
    cores = os.cpu_count() or 1
    assert towtruck.Settings.load(environ={"TOWTRUCK_WORKERS": "auto"}).workers == cores
    assert towtruck.Settings.load(flags={"workers": "auto"}).workers == cores
    assert towtruck.Settings.load(workers=2).workers == 2
