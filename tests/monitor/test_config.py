"""The monitor's configuration: strict keys, environment substitution, path resolution, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from monitor.config import ConfigError, MonitorConfig, load_config, parse_config, substitute_env

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "monitor.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "monitor.yaml"
    p.write_text(text)
    return p


def test_the_example_file_loads_and_documents_every_key():
    cfg = load_config(EXAMPLE, env={})
    assert cfg.node == "line1-monitor"
    assert [s.name for s in cfg.sources] == ["fan1", "pump-recording"]
    assert cfg.sinks.mqtt is not None and cfg.sinks.mqtt.username is None and cfg.sinks.mqtt.password is None
    text = EXAMPLE.read_text()
    missing = sorted(k for k in all_keys(MonitorConfig) if f"{k}:" not in text)
    assert missing == []


def all_keys(model: type[BaseModel]) -> set[str]:
    """Field names of a model and of every model nested in it (through Optional and list)."""
    out = set()
    for name, field in model.model_fields.items():
        out.add(name)
        for t in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(t, type) and issubclass(t, BaseModel):
                out |= all_keys(t)
    return out


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.sources == [] and cfg.alarms.k == 3 and cfg.alarms.n == 5 and cfg.sinks.mqtt is None
    assert cfg.noise.bundle is None and cfg.noise.noisy_above is None  # no classifier, no `noisy` policy
    assert cfg.node  # the host name


@pytest.mark.parametrize(
    "text, key",
    [
        ("alarms:\n  treshold: 3\n", "alarms.treshold"),
        ("sources:\n  - device: mic0\n    chanel: 1\n", "sources.0.chanel"),
        ("sinks:\n  mqtt:\n    url: mqtt://h\n    pasword: x\n", "sinks.mqtt.pasword"),
        ("colour: blue\n", "colour"),
    ],
)
def test_unknown_keys_are_rejected_with_their_path(tmp_path, text, key):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert f"{key}: unknown key" in str(exc.value) and "monitor.yaml" in str(exc.value)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"alarms": {"k": 6, "n": 5}}, "must not exceed"),
        ({"sources": [{"name": "a"}]}, "exactly one of `device` or `replay`"),
        ({"sources": [{"device": "mic0", "replay": "x.wav"}]}, "exactly one"),
        ({"sources": [{"name": "a/b", "device": 1}]}, "must be non-empty"),
        ({"sources": [{"name": "fan+", "device": 1}]}, "one MQTT topic level"),
        ({"sources": [{"name": "fan\t1", "device": 1}]}, "whitespace or control"),
        ({"sources": [{"name": "fan\x00", "device": 1}]}, "whitespace or control"),
        ({"sources": [{"name": "a", "device": 1}, {"name": "a", "device": 2}]}, "duplicate source names: a"),
        ({"node": "x y"}, "node"),
        ({"replay": {"speed": -1}}, "replay.speed"),
        ({"noise": {"noisy_above": 1.5}}, "noise.noisy_above"),
        ({"noise": {"level": 0.5}}, "noise.level: unknown key"),
    ],
)
def test_invalid_values_are_explained(data, needle):
    with pytest.raises(ConfigError, match="invalid configuration") as exc:
        parse_config(data)
    assert needle in str(exc.value)


def test_environment_substitution_with_defaults(tmp_path):
    p = write(
        tmp_path,
        "node: ${NODE}\n"
        "sinks:\n  mqtt:\n    url: mqtt://${HOST:-localhost}:${PORT:-1883}\n"
        "    username: ${USER_NAME:-}\n    password: ${SECRET}\n"
        "# a comment may mention ${UNSET} freely\n",
    )
    cfg = load_config(p, env={"NODE": "n1", "SECRET": "s3cret", "PORT": "8883"})
    assert cfg.node == "n1"
    assert cfg.sinks.mqtt.url == "mqtt://localhost:8883"
    assert cfg.sinks.mqtt.username is None
    assert cfg.sinks.mqtt.password.get_secret_value() == "s3cret"


def test_an_unset_variable_without_default_names_the_variable_and_key(tmp_path):
    p = write(tmp_path, "sinks:\n  mqtt:\n    password: ${MQTT_PASSWORD}\n")
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.password: environment variable MQTT_PASSWORD is not set"):
        load_config(p, env={})


def test_substitution_types_follow_the_schema():
    assert substitute_env({"a": ["${X}", 3]}, env={"X": "5"}) == {"a": ["5", 3]}
    assert parse_config(substitute_env({"alarms": {"k": "${K}"}}, env={"K": "2"})).alarms.k == 2


def test_relative_paths_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = sub / "m.yaml"
    p.write_text("bundle: b\nsources:\n  - replay: [x.wav, /abs/y.wav]\n    bundle: ../c\n"
                 "sinks:\n  jsonl:\n    path: e.jsonl\nnoise:\n  bundle: cls\n")
    cfg = load_config(p)
    assert cfg.bundle == sub / "b" and cfg.noise.bundle == sub / "cls"
    assert cfg.sources[0].replay == [str(sub / "x.wav"), "/abs/y.wav"]
    assert cfg.sources[0].bundle == sub / "../c"
    assert cfg.sinks.jsonl.path == sub / "e.jsonl"


@pytest.mark.parametrize("text, needle", [("a: [1\n", "not valid YAML"), ("- 1\n", "must be a mapping")])
def test_malformed_files(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(write(tmp_path, text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_a_yaml_bomb_and_an_oversized_file_are_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="YAML aliases"):
        load_config(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="at most"):
        load_config(big)
    fine = tmp_path / "anchors.yaml"  # a few anchors are ordinary YAML
    fine.write_text("alarms: &a {k: 2, n: 4}\n")
    assert load_config(fine).alarms.k == 2
