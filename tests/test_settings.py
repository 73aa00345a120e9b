"""Settings: one name per setting across flags, environment and defaults; bad values named."""

from __future__ import annotations

import pytest

from wspush.settings import Settings, SettingsError, env_name, fields


def test_defaults_match_the_go_program() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("localhost", 8080)
    assert settings.redis_url == "redis://localhost:6379"
    assert settings.prefix == "example."
    assert settings.keys == ()
    assert settings.ping == ""
    assert settings.ping_interval == 45
    assert settings.max_per_token == 15
    assert not settings.redis_configured


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("localhost:6379", "redis://localhost:6379"),
        ("10.1.2.3:7000", "redis://10.1.2.3:7000"),
        ("[::1]:6379", "redis://[::1]:6379"),
        ("redis://user:pw@host:1/2", "redis://user:pw@host:1/2"),
        ("rediss://h:6380", "rediss://h:6380"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    ],
)
def test_redis_takes_go_host_port_or_a_url(value: str, url: str) -> None:
    assert Settings(redis=value).redis_url == url


def test_every_setting_has_an_environment_variable() -> None:
    environ = {
        "WSPUSH_ADDR": "127.0.0.1:9000",
        "WSPUSH_PREFIX": "p.",
        "WSPUSH_PING_INTERVAL": "2.5",
        "WSPUSH_MAX_PER_TOKEN": "3",
        "WSPUSH_WS_FRAME": "text",
        "WSPUSH_EMBEDDED_REDIS": "no",
    }
    settings = Settings.from_env(environ)
    assert (settings.port, settings.prefix, settings.ping_interval) == (9000, "p.", 2.5)
    assert (settings.max_per_token, settings.ws_frame, settings.embedded_redis) == (
        3,
        "text",
        False,
    )
    assert {env_name(f.name) for f in fields()} >= set(environ)


def test_go_environment_names_and_heroku_names_are_honoured() -> None:
    settings = Settings.from_env(
        {"WSPUSH_KEY": "c2VjcmV0", "WSPUSH_PING": "hb", "REDIS_URL": "redis://r:1", "PORT": "5000"}
    )
    assert settings.keys == (b"secret",)
    assert settings.ping == "hb"
    assert settings.redis_url == "redis://r:1"
    assert settings.redis_configured
    assert (settings.host, settings.port) == ("0.0.0.0", 5000)


def test_command_line_beats_environment_and_addr_beats_port() -> None:
    settings = Settings.from_env(
        {
            "WSPUSH_PREFIX": "env.",
            "PORT": "5000",
            "WSPUSH_REDIS": "a:1",
            "REDIS_URL": "redis://b:2",
        },
        {"prefix": "flag.", "addr": ":7000"},
    )
    assert settings.prefix == "flag."
    assert (settings.host, settings.port) == ("0.0.0.0", 7000)
    assert settings.redis_url == "redis://a:1"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"hmac": "not base64!"}, "--hmac"),
        ({"hmac": "c2VjcmV0=="}, "--hmac"),
        ({"addr": "nonsense"}, "--addr"),
        ({"addr": "host:99999"}, "--addr"),
        ({"redis": "http://x"}, "--redis"),
        ({"ping_interval": "0"}, "--ping-interval"),
        ({"ping_interval": "soon"}, "--ping-interval"),
        ({"max_per_token": "0"}, "--max-per-token"),
        ({"queue_size": "x"}, "--queue-size"),
        ({"ws_frame": "json"}, "--ws-frame"),
        ({"cors_origins": " , "}, "--cors-origins"),
        ({"embedded_redis": "maybe"}, "--embedded-redis"),
        ({"expvar": "nope"}, "--expvar"),
        ({"max_request_head": "1000"}, "--max-request-head"),
        ({"max_request_head": "64k"}, "--max-request-head"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({}, overrides)
    assert str(refused.value).startswith(f"invalid {named}:")


def test_several_comma_separated_keys_are_all_decoded() -> None:
    assert Settings(hmac="c2VjcmV0, b2xk").keys == (b"secret", b"old")
    with pytest.raises(SettingsError, match="--hmac"):
        Settings(hmac="c2VjcmV0,not*valid")


def test_ws_origins_are_an_allow_list() -> None:
    settings = Settings(ws_origins="https://a.example, https://b.example")
    assert settings.allowed_ws_origins == {b"https://a.example", b"https://b.example"}
    assert Settings().allowed_ws_origins == frozenset()


def test_describe_redacts_secrets() -> None:
    shown = Settings(hmac="c2VjcmV0", redis="redis://u:hunter2@h:1").describe()
    assert shown["hmac"] == "<redacted>"
    assert "hunter2" not in str(shown)
