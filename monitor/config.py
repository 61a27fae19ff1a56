"""The daemon's configuration: one validated YAML file, overridden by command-line flags.

Every model forbids unknown keys so a typo (`treshold:`) is an error naming the key, not a silently ignored
setting. `${NAME}` and `${NAME:-default}` are replaced from the environment *before* validation, so secrets (MQTT
passwords) stay out of the file.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import unquote, urlsplit

import yaml

from models.levels import CLIPPED_FRACTION, SILENCE_DBFS
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AlarmPolicy(BaseModel):
    """k-of-n raising, hysteresis + hold clearing, cooldown between alarms (see monitor.alarms); the one place these
    defaults live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(3, ge=1, description="windows above threshold needed to raise")
    n: int = Field(5, ge=1, description="out of the last n windows")
    hysteresis: float = Field(0.9, gt=0, le=1, description="clear level as a fraction of the threshold")
    hold_seconds: float = Field(3.0, ge=0, description="score must stay below the clear level this long")
    cooldown_seconds: float = Field(10.0, ge=0, description="no new alarm this soon after one ended")
    update_interval_seconds: float = Field(1.0, ge=0, description="at most one `update` event per interval")

    @model_validator(mode="after")
    def _k_le_n(self) -> "AlarmPolicy":
        if self.k > self.n:
            raise ValueError(f"alarms.k ({self.k}) must not exceed alarms.n ({self.n})")
        return self


class SourceConfig(_Strict):
    """One audio input: a live device or wav file(s) to replay."""

    name: str | None = None
    device: str | int | None = None
    replay: list[str] | None = None
    channel: int = Field(0, ge=0, description="0-based input channel to monitor")
    bundle: Path | None = None
    threshold: float | None = None
    machine_id: str | None = Field(None, description="which machine this is (e.g. id_00), for per-id bundles")
    enabled: bool = True

    @field_validator("replay", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _topic_safe(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in "/#+" or c.isspace() or not c.isprintable() for c in v)):
            raise ValueError(f"source name {v!r} must be non-empty without '/', '#', '+', whitespace or control "
                             "characters (it is one MQTT topic level)")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> "SourceConfig":
        if (self.device is None) == (self.replay is None):
            raise ValueError("a source needs exactly one of `device` or `replay`")
        return self


# Prometheus' registry of default exporter ports has allocated all of 9100-9999 and continues upwards from 10000
# (https://github.com/prometheus/prometheus/wiki/Default-port-allocations); a port well clear of both, and below
# Linux's ephemeral range, cannot collide with a registered exporter on the same host.
DEFAULT_PROMETHEUS_PORT = 18464


class PrometheusConfig(_Strict):
    enabled: bool = False
    port: int = Field(DEFAULT_PROMETHEUS_PORT, ge=0, le=65535)
    host: str = "127.0.0.1"


class TuiConfig(_Strict):
    enabled: bool = True


class JsonlConfig(_Strict):
    path: Path | None = None
    include_scores: bool = False  # every window's score, not only alarms and status changes
    include_counters: bool = False


class MqttTls(BaseModel):
    """TLS files for `mqtts://` (system CAs when `ca_file` is unset); `insecure` turns off certificate and
    host-name checks, for a self-signed test broker only."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"MQTT TLS {info.field_name} {path!r} is not a readable file")
        return path


class MqttSettings(BaseModel):
    """Broker connection and topic layout. Credentials given in the URL are moved into `username`/`password`
    so that the URL (which may be logged) never carries the password."""

    model_config = ConfigDict(extra="forbid")

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(None, description="read the password from this file (systemd "
                                       "LoadCredential=: ${CREDENTIALS_DIRECTORY}/mqtt-password)")
    client_id: str | None = None
    tls: MqttTls = Field(default_factory=MqttTls)
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(default=30, ge=5, le=3600)
    base_topic: str = "asd"
    ha_discovery: bool = True
    ha_prefix: str = "homeassistant"
    ha_expire_after: int = Field(default=120, ge=1, description="HA marks the score unavailable after this many "
                                 "seconds without one")
    outbox_size: int = Field(default=1000, ge=1)
    score_interval: float = Field(default=1.0, ge=0.0)
    reconnect_min: float = Field(default=0.5, gt=0.0)
    reconnect_max: float = Field(default=30.0, gt=0.0)
    close_timeout: float = Field(default=5.0, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urlsplit(data["url"])
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT url must start with mqtt:// or mqtts://, got scheme {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("MQTT url has no host name")
        try:
            parts.port  # noqa: B018 - raises on a non-numeric port
        except ValueError as exc:
            raise ValueError(f"MQTT url has a bad port: {exc}") from None
        if parts.username is None and parts.password is None:
            return data
        data = dict(data)
        if parts.username and not data.get("username"):
            data["username"] = unquote(parts.username)
        if parts.password is not None and not data.get("password"):
            data["password"] = unquote(parts.password)
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        data["url"] = parts._replace(netloc=netloc).geturl()
        return data

    @model_validator(mode="after")
    def _password_from_file(self) -> "MqttSettings":
        if self.password_file is None:
            return self
        if self.password is not None:
            raise ValueError("give the MQTT password or password_file, not both")
        try:
            secret = self.password_file.read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            raise ValueError(f"MQTT password_file {self.password_file}: {exc.strerror or exc}") from None
        if not secret:
            raise ValueError(f"MQTT password_file {self.password_file} is empty")
        object.__setattr__(self, "password", SecretStr(secret))
        return self

    @property
    def use_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.use_tls else 1883)


def parse_mqtt_url(url: str, **overrides: Any) -> MqttSettings:
    """Build settings from `--mqtt URL` (`mqtt[s]://[user[:pass]@]host[:port]`); `overrides` set other fields."""
    return MqttSettings(url=url, **overrides)


class SinksConfig(_Strict):
    mqtt: MqttSettings | None = None
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    tui: TuiConfig = Field(default_factory=TuiConfig)
    jsonl: JsonlConfig = Field(default_factory=JsonlConfig)


MAX_WINDOW_SECONDS = 3600.0  # a longer window would hold hours of audio per source before its first score


class PipelineConfig(_Strict):
    """Windowing and signal-health settings shared by all sources."""

    window_seconds: float | None = Field(None, gt=0, le=MAX_WINDOW_SECONDS, description="default: the bundle's")
    hop_seconds: float | None = Field(None, gt=0, le=MAX_WINDOW_SECONDS, description="default: the bundle's")
    device: str = "auto"
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for features and scoring")
    silence_dbfs: float = SILENCE_DBFS
    clipping_fraction: float = Field(CLIPPED_FRACTION, gt=0, le=1, description="share of samples at full scale")
    queue_blocks: int = Field(64, ge=1, description="audio blocks buffered per source before the oldest is dropped")
    block_seconds: float = Field(0.1, gt=0, description="replay/capture block length")
    watchdog_seconds: float = Field(3.0, gt=0, description="a live source silent this long is declared offline")


class NoiseConfig(_Strict):
    """The noise classifier (a `classifier` bundle, e.g. `asd-offline train --model lstm_classifier`): every source's
    audio is scored by it too, and each score event carries the source's latest noise score (0..1)."""

    bundle: Path | None = Field(None, description="classifier bundle directory (null: no noise score)")
    noisy_above: float | None = Field(None, ge=0, le=1, description="a source whose noise score is above this is "
                                      "`noisy` (null: never; the score is still published)")


class ReplayConfig(_Strict):
    speed: float = Field(1.0, ge=0, description="1 real time, 4 four times faster, 0 as fast as possible")
    loop: bool = False
    duration_seconds: float | None = Field(None, gt=0, description="stop each replay after this much audio")


def default_state_dir() -> Path:
    """Where the daemon keeps what must survive a crash (open alarms): systemd's `StateDirectory=`
    (`$STATE_DIRECTORY`), else `$XDG_STATE_HOME/asd-monitor`, else `~/.local/state/asd-monitor`."""
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "asd-monitor"


class MonitorConfig(_Strict):
    node: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "asd")
    state_dir: Path = Field(default_factory=default_state_dir,
                            description="open alarms survive a crash here (default: see default_state_dir)")
    bundle: Path | None = None
    machine_id: str | None = Field(None, description="machine id of every source that does not give its own")
    sources: list[SourceConfig] = Field(default_factory=list)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    alarms: AlarmPolicy = Field(default_factory=AlarmPolicy)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    sinks: SinksConfig = Field(default_factory=SinksConfig)

    @field_validator("node")
    @classmethod
    def _node_topic_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "/#+ "):
            raise ValueError(f"node {v!r} must be non-empty without '/', '#', '+' or spaces (MQTT topics)")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> "MonitorConfig":
        names = [s.name for s in self.sources if s.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source names: {', '.join(dupes)}")
        return self


def substitute_env(value: Any, env: Mapping[str, str] | None = None, where: str = "") -> Any:
    """Replace `${NAME}` / `${NAME:-default}` in every string of a parsed document; an unset variable without a
    default is an error naming it and the key that uses it."""
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: substitute_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    out = _ENV_REF.sub(repl, value)
    # `password: ${MQTT_PASSWORD:-}` with the variable unset means "no password", not an empty one
    return None if out == "" and _ENV_REF.fullmatch(value) else out


def describe_validation_error(exc: ValidationError, origin: str) -> str:
    """Each bad key and why, never the offending value (a malformed MQTT URL may carry a password)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return f"{origin}: invalid configuration\n" + "\n".join(lines)


def parse_config(data: dict[str, Any] | None, origin: str = "config") -> MonitorConfig:
    """Validate a mapping (already env-substituted); errors name `origin` and each bad key."""
    try:
        return MonitorConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, origin)) from None


MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_ALIASES = 100  # anchors and aliases are fine; a "billion laughs" document expands without bound


class _LimitedLoader(yaml.SafeLoader):
    """`yaml.safe_load` that refuses more than `MAX_YAML_ALIASES` alias references."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name): refused")
        return super().compose_node(parent, index)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> MonitorConfig:
    """Read a YAML config (or the defaults when `path` is None). Relative paths in it are relative to the file."""
    if path is None:
        return MonitorConfig()
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a monitor config is at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_LimitedLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    try:
        data = substitute_env(data, env)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg = parse_config(data, str(path))
    return _resolve_paths(cfg, path.parent)


def _resolve_paths(cfg: MonitorConfig, base: Path) -> MonitorConfig:
    def rel(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    if cfg.bundle is not None:
        cfg.bundle = rel(cfg.bundle) or cfg.bundle
    cfg.state_dir = rel(cfg.state_dir) or cfg.state_dir
    if cfg.noise.bundle is not None:
        cfg.noise.bundle = rel(cfg.noise.bundle) or cfg.noise.bundle
    for src in cfg.sources:
        if src.bundle is not None:
            src.bundle = rel(src.bundle) or src.bundle
        if src.replay is not None:
            src.replay = [p if Path(p).is_absolute() else str(base / p) for p in src.replay]
    if cfg.sinks.jsonl.path is not None:
        cfg.sinks.jsonl.path = rel(cfg.sinks.jsonl.path) or cfg.sinks.jsonl.path
    return cfg
