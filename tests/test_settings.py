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
    settings = towtruck.Settings.load(environ={}, flags={"peers": ["[::1]:9000"]})
    assert settings.peers == ("[::1]:9000",)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"environ": {"TOWTRUCK_MAX_ACTORS": "lots"}}, "TOWTRUCK_MAX_ACTORS"),
        ({"environ": {}, "flags": {"max_actors": "0"}}, "--max-actors"),
        ({"environ": {}, "flags": {"call_timeout": "-1"}}, "--call-timeout"),
        ({"environ": {}, "flags": {"port": "70000"}}, "--port"),
        ({"environ": {}, "flags": {"peers": ["no-port"]}}, "--peer"),
        ({"environ": {"TOWTRUCK_WORKERS": "some"}}, "TOWTRUCK_WORKERS"),
        ({"environ": {}, "max_body": 1.5}, "max_body"),
        ({"environ": {}, "gc_interval": float("nan")}, "gc_interval"),
        ({"environ": {}, "debug": "maybe"}, "debug"),
        ({"environ": {}, "host": ""}, "host"),
    ],
)
def test_bad_values_name_their_source(source: dict, expected: str) -> None:
    with pytest.raises(towtruck.SettingsError, match=f"^{expected}: "):
        towtruck.Settings.load(**source)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(towtruck.SettingsError, match="max_actor: unknown setting"):
        towtruck.Settings.load(environ={}, max_actor=3)
    with pytest.raises(towtruck.SettingsError, match="TOWTRUCK_MAX_ACTOR: unknown setting"):
        towtruck.Settings.load(environ={"TOWTRUCK_MAX_ACTOR": "3"})
    with pytest.raises(towtruck.SettingsError, match="nope: unknown setting"):
        towtruck.Settings().replace(nope=1)


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
    assert towtruck.Settings.load(environ={}, flags={"workers": "auto"}).workers == cores
    assert towtruck.Settings.load(environ={}, workers=2).workers == 2
