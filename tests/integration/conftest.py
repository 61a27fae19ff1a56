"""Real services for integration tests: a mosquitto broker, PulseAudio virtual microphones, a Prometheus server.

Every service binds to 127.0.0.1 on a free port, runs from a tmp dir, and is stopped by its PID at teardown.
A missing binary skips the test locally and fails it in CI (`skip_or_fail`).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import skip_or_fail
from tests.helpers import make_noise_classifier_bundle, make_tiny_bundle

STARTUP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A port the kernel just handed out; the service binds it right after (a small race, fine on a test box)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until true; fail the test naming `what` when `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"`{name}` is not installed")
    return str(path)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """Terminate one process we started (by its PID), killing it if it ignores SIGTERM."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# ---- mosquitto ------------------------------------------------------------------------------------------------


class Mosquitto:
    """A broker on a fixed port that can be stopped and started again (outbox delivery across a restart)."""

    def __init__(self, binary: str, workdir: Path, tls: TlsFiles | None = None) -> None:
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        self.url = f"{'mqtts' if tls else 'mqtt'}://{self.host}:{self.port}"
        self.conf = workdir / "mosquitto.conf"
        self.log_file = workdir / "mosquitto.log"
        conf = f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
        if tls is not None:
            # As root, mosquitto drops to user `mosquitto`, which cannot read certificates in a private tmp dir.
            conf += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            conf += f"cafile {tls.ca}\ncertfile {tls.cert}\nkeyfile {tls.key}\n"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.host, self.port),
                       STARTUP_TIMEOUT_S, f"mosquitto on port {self.port}")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited at start: {self.log_file.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        wait_until(lambda: not port_open(self.host, self.port), STARTUP_TIMEOUT_S, "mosquitto to stop")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(openssl: str, directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 (subjectAltName, so host names verify)."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                          "server.pem"))
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=asd-test-ca",
         "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
         "-extfile", ext, "-out", cert],
    ):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
    return TlsFiles(ca, cert, key)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(require_binary("mosquitto"), tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        stop_process(broker.proc)


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that only speaks TLS (`.url` is mqtts://, `.tls.ca` verifies it)."""
    binary = require_binary("mosquitto")
    tls = make_tls_files(require_binary("openssl"), tmp_path)
    broker = Mosquitto(binary, tmp_path, tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        stop_process(broker.proc)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class MqttCollector:
    """A paho client (its own network thread) that records every message on `topics`, in arrival order."""

    host: str
    port: int
    topics: list[str]
    messages: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as paho

        subscribed = threading.Event()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2)

        def on_connect(c: Any, _userdata: Any, _flags: Any, _rc: Any, _props: Any) -> None:
            c.subscribe([(t, 1) for t in self.topics])

        def on_message(_c: Any, _userdata: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

        client.on_connect = on_connect
        client.on_subscribe = lambda *_args: subscribed.set()
        client.on_message = on_message
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        self._client = client
        if not subscribed.wait(STARTUP_TIMEOUT_S):
            self.stop()
            raise TimeoutError(f"MQTT collector could not subscribe to {self.topics}")

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def _enough(self, topic: str, count: int, payload: bytes | None) -> bool:
        return len([m for m in self.on(topic) if payload is None or m.payload == payload]) >= count

    @staticmethod
    def _what(topic: str, count: int, payload: bytes | None) -> str:
        return f"{count} message(s) on {topic}" + (f" = {payload!r}" if payload is not None else "")

    def wait_for(self, topic: str, count: int = 1, timeout: float = 15.0,
                 payload: bytes | None = None) -> list[Received]:
        """Block until `count` messages (with `payload`, if given) arrived on `topic`; return all on it.
        From a coroutine whose event loop runs the publisher, use `await_for` instead."""
        wait_until(lambda: self._enough(topic, count, payload), timeout, self._what(topic, count, payload))
        return self.on(topic)

    async def await_for(self, topic: str, count: int = 1, timeout: float = 15.0,
                        payload: bytes | None = None) -> list[Received]:
        """`wait_for` that lets the event loop run meanwhile (for sinks living in the test's loop)."""
        deadline = time.monotonic() + timeout
        while not self._enough(topic, count, payload):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {self._what(topic, count, payload)}")
            await asyncio.sleep(0.02)
        return self.on(topic)


@pytest.fixture
def mqtt_collector(mosquitto: Mosquitto) -> Iterator[Callable[[list[str]], MqttCollector]]:
    """Factory: `mqtt_collector(["asd/#"])` subscribes now and records (topic, payload, retain) in order."""
    collectors: list[MqttCollector] = []

    def make(topics: list[str]) -> MqttCollector:
        collector = MqttCollector(mosquitto.host, mosquitto.port, list(topics))
        collector.start()
        collectors.append(collector)
        return collector

    yield make
    for collector in collectors:
        collector.stop()


# ---- PulseAudio virtual microphones ---------------------------------------------------------------------------

PULSE_SINKS = ("asd_mic0", "asd_mic1")


class PulseMics:
    """A private PulseAudio daemon whose null sinks' monitors appear to PortAudio as capture devices asd_mic0/1."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.runtime_dir = root / "run"
        self.home = root / "home"
        self.runtime_dir.mkdir(mode=0o700)
        self.home.mkdir()
        (self.home / ".asoundrc").write_text(
            "".join(f'pcm.{n} {{ type pulse; device "{n}.monitor" }}\n' for n in PULSE_SINKS))
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir), "HOME": str(self.home)}
        self.log_file = root / "pulseaudio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.devices = PULSE_SINKS

    def _pactl_ok(self) -> bool:
        return subprocess.run(["pactl", "info"], env=self.env, capture_output=True, timeout=5).returncode == 0

    def start(self) -> None:
        args = [self.binary, "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                "--use-pid-file=no", "-L", "module-native-protocol-unix auth-anonymous=1"]
        for name in PULSE_SINKS:
            args += ["-L", f"module-null-sink sink_name={name} rate=48000 channels=1"]
        args += ["-L", "module-always-sink"]
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or self._pactl_ok(), STARTUP_TIMEOUT_S,
                       "pulseaudio to answer `pactl info`", interval=0.2)
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"pulseaudio exited at start: {self.log_file.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        """Kill the daemon and start a new one: open capture streams see a real device loss. PortAudio keeps its
        old device list until re-initialised (`sd._terminate(); sd._initialize()`), as a recovering source does."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None
        self.start()

    def play(self, device: str, wav_path: str | Path) -> subprocess.Popen[bytes]:
        """Play a file into a virtual microphone (real time); the caller may wait() on the returned process."""
        if device not in PULSE_SINKS:
            raise ValueError(f"unknown virtual microphone {device!r}; have {PULSE_SINKS}")
        return subprocess.Popen(["paplay", f"--device={device}", str(wav_path)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _reinit_portaudio() -> None:
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


@pytest.fixture(scope="module")
def pulse_mics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseMics]:
    """PulseAudio with asd_mic0/asd_mic1; this process's env points at it for the module, then is restored."""
    binary = require_binary("pulseaudio")
    for tool in ("pactl", "paplay"):
        require_binary(tool)
    mics = PulseMics(binary, tmp_path_factory.mktemp("pulse"))
    mics.start()
    saved = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "HOME")}
    os.environ.update({"XDG_RUNTIME_DIR": str(mics.runtime_dir), "HOME": str(mics.home)})
    try:
        _reinit_portaudio()
        yield mics
    finally:
        mics.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reinit_portaudio()


# ---- Prometheus -----------------------------------------------------------------------------------------------


class PrometheusServer:
    """A Prometheus scraping `targets` every second, with a query helper that waits for data."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: asd-monitor\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        self.log_file = workdir / "prometheus.log"
        with self.log_file.open("ab") as log:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or self._ready(), 30.0, "prometheus /-/ready",
                       interval=0.2)
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited at start: {self.log_file.read_text()[-2000:]}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result (the first scrape takes a few seconds)."""
        result: list[dict[str, Any]] = []

        def has_data() -> bool:
            nonlocal result
            result = self.api("query", query=expr)["result"]
            return bool(result)

        try:
            wait_until(has_data, timeout, f"PromQL {expr!r} to return data", interval=0.5)
        except TimeoutError as exc:
            targets = self.api("targets")["activeTargets"]
            health = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
            raise TimeoutError(f"{exc}; targets: {health}") from None
        return result

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@pytest.fixture
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """Factory: `prometheus_server(["127.0.0.1:PORT"])` starts a server scraping those targets every 1 s."""
    binary = require_binary("prometheus")
    servers: list[PrometheusServer] = []

    def make(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), list(targets))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# --- the daemon as a subprocess (used by test_daemon_*.py) ---

ROOT = Path(__file__).resolve().parents[2]
NODE = "itest"
BASE = f"asd/{NODE}"
EVENT_FIELDS = {"schema", "type", "id", "source", "model", "score", "peak_score", "threshold", "start_time",
                "end_time", "reason"}
# k=3 of 5 quarter-second windows raise; 1 s below 0.9 x threshold clears
ALARM_CONFIG = "alarms:\n  k: 3\n  n: 5\n  hold_seconds: 1.0\n  cooldown_seconds: 60\n"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("daemon") / "bundle")


@pytest.fixture(scope="module")
def calibrated_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`bundle_dir` with its threshold's calibration, as trained bundles have (the dashboard's threshold panel)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("daemon") / "bundle", calibrated=True)


@pytest.fixture(scope="module")
def noise_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A noise classifier for `bundle_dir`'s sources (same sample rate): `--noise-bundle`."""
    return make_noise_classifier_bundle(tmp_path_factory.mktemp("daemon") / "noise")


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout} s; output:\n{self.output()[-3000:]}")


def start_daemon(tmp_path: Path, *args: str, config: str = "", env: dict[str, str] | None = None) -> DaemonProcess:
    """`python -m monitor.cli --no-tui --node itest --config <tmp> ARGS`, output to a log file."""
    cfg = tmp_path / f"monitor-{len(list(tmp_path.glob('monitor-*.yaml')))}.yaml"
    cfg.write_text(config)
    log = cfg.with_suffix(".log")
    with log.open("wb") as out:
        state = [] if "--state-dir" in args else ["--state-dir", str(tmp_path / "state")]
        proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "--no-tui", "--node", NODE, "--config", str(cfg),
                                 *state, "-v", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
    return DaemonProcess(proc, log)


@pytest.fixture
def daemons():
    """Daemons started by a test are stopped (by PID) at its end, whatever happened."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        stop_process(d.proc)
