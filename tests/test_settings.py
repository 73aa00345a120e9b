"""Settings: one name per setting across flags, environment and defaults; bad values named."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.jwts import KeyPair, write_public_key
from wspush.settings import Settings, SettingsError, env_name, fields, option_name


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


# -- JWT keys ------------------------------------------------------------------------------


def test_jwt_secrets_are_split_for_rotation_and_verify_every_hs_algorithm() -> None:
    keys = Settings(jwt_secret=f"{'a' * 32}, {'b' * 48},{'c' * 64}").jwt_keys
    assert [key.key for key in keys] == [b"a" * 32, b"b" * 48, b"c" * 64]
    assert {key.algorithms for key in keys} == {("HS256", "HS384", "HS512")}
    assert "a" * 32 not in repr(keys)
    assert Settings(jwt_secret="a" * 32).describe()["jwt_secret"] == "<redacted>"


def test_jwt_public_keys_get_the_algorithm_of_their_kind(key_pairs: dict[str, KeyPair]) -> None:
    paths = ",".join(str(pair.path) for pair in key_pairs.values())
    keys = Settings(jwt_public_key=paths).jwt_keys
    assert [key.algorithms for key in keys] == [("RS256",), ("ES256",), ("EdDSA",)]


def test_one_pem_file_may_hold_several_keys(key_pairs: dict[str, KeyPair], tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(key_pairs["RS256"].public_pem + key_pairs["EdDSA"].public_pem)
    keys = Settings(jwt_public_key=str(both)).jwt_keys
    assert [key.algorithms for key in keys] == [("RS256",), ("EdDSA",)]


def test_settings_with_jwt_keys_survive_pickling_into_worker_processes(
    key_pairs: dict[str, KeyPair],
) -> None:
    paths = ",".join(str(pair.path) for pair in key_pairs.values())
    settings = Settings(jwt_secret="a" * 40, jwt_public_key=paths)
    copy = pickle.loads(pickle.dumps(settings))
    assert [key.algorithms for key in copy.jwt_keys] == [
        key.algorithms for key in settings.jwt_keys
    ]
    assert copy.jwt_keys[0].key == b"a" * 40
    assert copy.jwt_keys[1].key.public_numbers() == settings.jwt_keys[1].key.public_numbers()


def pem_file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def bad_jwt_settings(tmp_path: Path) -> list[tuple[dict[str, str], str, str]]:
    """(settings, setting named, what the message says) for each bad JWT key."""
    p384 = ec.generate_private_key(ec.SECP384R1())
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return [
        ({"jwt_secret": "a" * 40 + ",,"}, "--jwt-secret", "secret 2 is empty"),
        ({"jwt_secret": "-----BEGIN PUBLIC KEY-----" + "x" * 40}, "--jwt-secret", "PEM"),
        ({"jwt_public_key": str(tmp_path / "missing.pem")}, "--jwt-public-key", "cannot read"),
        (
            {"jwt_public_key": pem_file(tmp_path, "empty.pem", b"not a key")},
            "--jwt-public-key",
            "no PEM block",
        ),
        (
            {"jwt_public_key": pem_file(tmp_path, "garbled.pem", GARBLED_PEM)},
            "--jwt-public-key",
            "not a PEM public key",
        ),
        (
            {"jwt_public_key": write_public_key(p384, tmp_path / "p384.pem").as_posix()},
            "--jwt-public-key",
            "unsupported",
        ),
        (
            {"jwt_public_key": write_public_key(small_rsa, tmp_path / "rsa1024.pem").as_posix()},
            "--jwt-public-key",
            "at least 2048",
        ),
        ({"jwt_audience": "wspush"}, "--jwt-audience", "--jwt-secret or --jwt-public-key"),
        ({"jwt_secret": "a" * 32, "jwt_leeway": "-1"}, "--jwt-leeway", "0 or more"),
        ({"jwt_secret": "a" * 32, "jwt_max_age": "soon"}, "--jwt-max-age", "not a float"),
    ]


GARBLED_PEM = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"


def test_a_bad_jwt_key_is_refused_naming_the_setting(tmp_path: Path) -> None:
    for overrides, named, says in bad_jwt_settings(tmp_path):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({}, overrides)
        assert str(refused.value).startswith(f"invalid {named}:"), overrides
        assert says in str(refused.value), (overrides, str(refused.value))


def test_a_bad_jwt_key_stops_start_up_with_one_line(tmp_path: Path) -> None:
    cases = bad_jwt_settings(tmp_path)
    # A bad secret, an unreadable PEM, an unsupported key kind.
    for overrides, named, _ in (cases[0], cases[2], cases[5]):
        args = [arg for name, value in overrides.items() for arg in (option_name(name), value)]
        result = subprocess.run(
            [sys.executable, "-m", "wspush", *args], capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(f"wspush: invalid {named}:"), result.stderr


def test_a_short_secret_works_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="wspush.jwt"):
        keys = Settings(jwt_secret="short").jwt_keys
    assert [key.key for key in keys] == [b"short"]
    assert "secret 1 has 5 bytes" in caplog.text


def test_a_private_key_file_verifies_with_its_public_half_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with caplog.at_level("WARNING", logger="wspush.jwt"):
        (key,) = Settings(jwt_public_key=pem_file(tmp_path, "private.pem", pem)).jwt_keys
    assert key.algorithms == ("EdDSA",)
    assert key.key.public_bytes_raw() == private.public_key().public_bytes_raw()
    assert "is a private key" in caplog.text
