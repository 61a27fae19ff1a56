"""`asd-monitor`: listen to machines (live devices, wav replays or `--demo`) and raise alarms.

Flags override the `--config` file. Heavy modules (torch, sounddevice) are imported only when they are needed, so
`--help` is instant.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from models.runtime import keep_freed_memory, own_version, setup_logging
from pydantic import ValidationError

from monitor.config import ConfigError, MonitorConfig, describe_validation_error, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asd-monitor", description=__doc__.splitlines()[0])
    p.add_argument("--device", action="append", default=[], metavar="NAME|INDEX|micN",
                   help="capture from an input device: unique name substring, index, or micN (N-th input device); "
                        "repeatable")
    p.add_argument("--replay", action="append", default=[], metavar="WAV",
                   help="replay a wav file, folder or glob as one source; repeatable")
    p.add_argument("--bundle", metavar="DIR", help="model bundle for sources without their own")
    p.add_argument("--noise-bundle", metavar="DIR",
                   help="noise classifier bundle (e.g. lstm_classifier): publish every source's noise score (0..1); "
                        "`noise.noisy_above` in the config marks a source `noisy` above a level")
    p.add_argument("--config", metavar="YAML", help="configuration file (see configs/monitor.example.yaml)")
    p.add_argument("--mqtt", metavar="URL", help="publish to this broker, mqtt[s]://[user[:pass]@]host[:port]")
    p.add_argument("--prometheus-port", type=int, metavar="N", help="serve Prometheus metrics on this port")
    p.add_argument("--no-tui", action="store_true", help="no terminal dashboard")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--demo", action="store_true",
                   help="three synthetic machines, one turning faulty for a while; trains a small bundle once")
    p.add_argument("--speed", type=float, metavar="X", help="replay pace: 1 real time, 4 faster, 0 as fast as possible")
    p.add_argument("--loop", action="store_true", help="replay forever")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="stop each replay/demo stream after this much audio")
    p.add_argument("--node", metavar="NAME", help="instance name in MQTT topics (default: host name)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where open alarms survive a crash (default: $STATE_DIRECTORY, else ~/.local/state/asd-monitor)")
    p.add_argument("--id", dest="machine_id", metavar="MACHINE_ID",
                   help="machine id of the sources (e.g. id_00): selects per-id thresholds, required by per-id models")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--version", action="version", version=f"%(prog)s {own_version()}")
    return p


def apply_args(cfg: MonitorConfig, args: argparse.Namespace) -> MonitorConfig:
    """Command-line flags on top of the file's settings; validated like the file."""
    data = cfg.model_dump()
    if args.node:
        data["node"] = args.node
    if args.bundle:
        data["bundle"] = args.bundle
    if args.noise_bundle:
        data["noise"]["bundle"] = args.noise_bundle
    if args.machine_id:
        data["machine_id"] = args.machine_id
    if args.state_dir:
        data["state_dir"] = args.state_dir
    data["sources"] += [{"device": d} for d in args.device] + [{"replay": [r]} for r in args.replay]
    if args.speed is not None:
        data["replay"]["speed"] = args.speed
    if args.loop:
        data["replay"]["loop"] = True
    if args.duration is not None:
        data["replay"]["duration_seconds"] = args.duration
    if args.prometheus_port is not None:
        data["sinks"]["prometheus"].update(enabled=True, port=args.prometheus_port)
    if args.no_tui:
        data["sinks"]["tui"]["enabled"] = False
    if args.mqtt:
        mqtt = cfg.sinks.mqtt.model_dump() if cfg.sinks.mqtt is not None else {}
        mqtt["url"] = args.mqtt
        if "@" in args.mqtt:  # credentials in the URL replace the file's
            mqtt.pop("username", None)
            mqtt.pop("password", None)
        data["sinks"]["mqtt"] = mqtt
    try:
        return MonitorConfig.model_validate(data)
    except ValidationError as exc:  # each bad key and why, never the value (a URL may carry a password)
        raise ConfigError(describe_validation_error(exc, "command line")) from None


def _setup_logging(verbose: int) -> None:
    setup_logging(logging.WARNING - 10 * min(verbose, 2))


def run(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon, DaemonError
    from monitor.sources import DeviceError

    if args.list_devices:
        from monitor.sources import format_device_list, list_input_devices

        print(format_device_list(list_input_devices()))
        return 0
    try:
        cfg = apply_args(load_config(args.config), args)
        synth, synth_bundle = [], None
        if args.demo:
            from monitor.demo import demo_streams, load_or_train

            if args.prometheus_port is None and not cfg.sinks.prometheus.enabled:
                cfg.sinks.prometheus.enabled = True  # on its default port
            synth_bundle = load_or_train()
            synth = demo_streams()
        tui = cfg.sinks.tui.enabled and sys.stdout.isatty()
        daemon = Daemon(cfg, synth=synth, synth_bundle=synth_bundle, tui=tui)
        return asyncio.run(daemon.run())
    except (ConfigError, DaemonError, DeviceError, OSError) as exc:  # OSError: e.g. the metrics port is taken
        logging.getLogger("asd-monitor").debug("details", exc_info=True)
        print(f"asd-monitor: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    keep_freed_memory()
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
