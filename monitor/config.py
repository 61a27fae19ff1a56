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
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.sinks.mqtt import MqttSettings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AlarmPolicyConfig(_Strict):
    """k-of-n raising, hysteresis + hold clearing, cooldown between alarms (see monitor.alarms)."""

    k: int = Field(3, ge=1, description="windows above threshold needed to raise")
    n: int = Field(5, ge=1, description="out of the last n windows")
    hysteresis: float = Field(0.9, gt=0, le=1, description="clear level as a fraction of the threshold")
    hold_seconds: float = Field(3.0, ge=0, description="score must stay below the clear level this long")
    cooldown_seconds: float = Field(10.0, ge=0, description="no new alarm this soon after one ended")
    update_interval_seconds: float = Field(1.0, ge=0, description="at most one `update` event per interval")

    @model_validator(mode="after")
    def _k_le_n(self) -> "AlarmPolicyConfig":
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
    enabled: bool = True

    @field_validator("replay", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _topic_safe(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/#+ ")):
            raise ValueError(f"source name {v!r} must be non-empty without '/', '#', '+' or spaces (MQTT topics)")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> "SourceConfig":
        if (self.device is None) == (self.replay is None):
            raise ValueError("a source needs exactly one of `device` or `replay`")
        return self


class PrometheusConfig(_Strict):
    enabled: bool = False
    port: int = Field(9108, ge=0, le=65535)
    host: str = "127.0.0.1"


class TuiConfig(_Strict):
    enabled: bool = True


class JsonlConfig(_Strict):
    path: Path | None = None
    include_scores: bool = False  # every window's score, not only alarms and status changes
    include_counters: bool = False


class SinksConfig(_Strict):
    mqtt: MqttSettings | None = None  # monitor.sinks.mqtt owns the broker settings (URL, TLS, auth, topics)
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    tui: TuiConfig = Field(default_factory=TuiConfig)
    jsonl: JsonlConfig = Field(default_factory=JsonlConfig)


class PipelineConfig(_Strict):
    """Windowing and signal-health settings shared by all sources."""

    window_seconds: float | None = Field(None, gt=0, description="default: the bundle's")
    hop_seconds: float | None = Field(None, gt=0, description="default: the bundle's")
    device: str = "auto"
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for features and scoring")
    silence_dbfs: float = -70.0
    clipping_fraction: float = Field(0.01, gt=0, le=1, description="share of samples at full scale")
    queue_blocks: int = Field(64, ge=1, description="audio blocks buffered per source before the oldest is dropped")
    block_seconds: float = Field(0.1, gt=0, description="replay/capture block length")
    watchdog_seconds: float = Field(3.0, gt=0, description="a live source silent this long is declared offline")


class ReplayConfig(_Strict):
    speed: float = Field(1.0, ge=0, description="1 real time, 4 four times faster, 0 as fast as possible")
    loop: bool = False
    duration_seconds: float | None = Field(None, gt=0, description="stop each replay after this much audio")


class MonitorConfig(_Strict):
    node: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "asd")
    bundle: Path | None = None
    sources: list[SourceConfig] = Field(default_factory=list)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    alarms: AlarmPolicyConfig = Field(default_factory=AlarmPolicyConfig)
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


def _describe(exc: ValidationError, origin: str) -> str:
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
        raise ConfigError(_describe(exc, origin)) from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> MonitorConfig:
    """Read a YAML config (or the defaults when `path` is None). Relative paths in it are relative to the file."""
    if path is None:
        return MonitorConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
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
    for src in cfg.sources:
        if src.bundle is not None:
            src.bundle = rel(src.bundle) or src.bundle
        if src.replay is not None:
            src.replay = [p if Path(p).is_absolute() else str(base / p) for p in src.replay]
    if cfg.sinks.jsonl.path is not None:
        cfg.sinks.jsonl.path = rel(cfg.sinks.jsonl.path) or cfg.sinks.jsonl.path
    return cfg
