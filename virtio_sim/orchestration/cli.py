"""The ``virtio-sim`` command."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from virtio_sim.argtypes import positive_seconds
from virtio_sim.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from virtio_sim.peertext import peer_text
from virtio_sim.spec import LIMITS

# The rest is imported by the command that uses it: ``virtio-sim run`` pays for the host
# and guest stack, not for rich, the matrix, conformance or the attack corpus
# (tests/cli/test_imports.py).
if TYPE_CHECKING:
    from rich.console import Console

    from virtio_sim.orchestration.embedded import RunConfig
    from virtio_sim.outcome import RunResult

SECRET_ENV = "VIRTIO_SIM_SECRET"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return int(t[:-1], 0) * units[t[-1]]
        return int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M)") from None


def _qemu_ram(text: str) -> int:
    from virtio_sim.host.devices.base import PropertyError
    from virtio_sim.host.machine_types import parse_ram_size

    try:
        return parse_ram_size(text)
    except PropertyError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


COMMANDS = (
    "run", "host", "guest", "bench", "matrix", "conformance", "compat", "vhost-user", "attack", "fuzz",
)  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, only that subcommand gets its options (the
    others keep their names and help), so a run imports no other command's modules."""
    p = _Parser(prog="virtio-sim", description="virtio feature-negotiation and vring emulator")
    p.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def wanted(name: str) -> bool:
        return command is None or command == name

    run = sub.add_parser("run", help="run one device with one workload, host and guest embedded")
    if wanted("run"):
        _add_run_arguments(run)
    host = sub.add_parser(
        "host",
        help="serve virtio devices to guest processes",
        description="Serve QEMU-style virtio devices to guest processes over a socket.",
    )
    if wanted("host"):
        _add_host_arguments(host)
    guest = sub.add_parser(
        "guest",
        help="run a guest driver stack against a host process",
        description="Connect to a virtio-sim host, boot, probe, run one workload.",
    )
    if wanted("guest"):
        _add_guest_arguments(guest)
    sub.add_parser("bench", help="run the benchmarks (the options of python -m benchmarks follow)")
    m = sub.add_parser("matrix", help="run an interoperability matrix (the main job)")
    if wanted("matrix"):
        from virtio_sim.orchestration.matrix.cli import add_matrix_arguments

        add_matrix_arguments(m)
    conf = sub.add_parser("conformance", help="check a device or driver against the spec, per requirement")
    if wanted("conformance"):
        from virtio_sim.orchestration.conformance.cli import add_conformance_arguments

        add_conformance_arguments(conf)
    c = sub.add_parser("compat", help="old vs new driver: where did the outcome change?")
    if wanted("compat"):
        from virtio_sim.orchestration.compat_cli import add_compat_arguments

        add_compat_arguments(c)
    vu = sub.add_parser("vhost-user", help="serve one of our devices to a QEMU vhost-user front-end")
    if wanted("vhost-user"):
        from virtio_sim.host.vhost_user_cli import add_vhost_user_arguments

        add_vhost_user_arguments(vu)
    attack = sub.add_parser("attack", help="replay the hostile-peer corpus (see --list)")
    fuzz = sub.add_parser("fuzz", help="fuzz rings, registers and wire frames for a while")
    if wanted("attack") or wanted("fuzz"):
        from virtio_sim.orchestration.attacks.cli import add_attack_arguments, add_fuzz_arguments

        add_attack_arguments(attack)
        add_fuzz_arguments(fuzz)
    return p


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from virtio_sim import __version__

        print(f"virtio-sim {__version__}")
        parser.exit()


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    from virtio_sim.guest.workloads import WORKLOADS
    from virtio_sim.orchestration.embedded import TRANSPORTS

    add_qemu_options(run, ram_dest="ram")
    run.add_argument("--workload", help=", ".join(WORKLOADS))
    run.add_argument(
        "--transport",
        default=None,
        choices=TRANSPORTS,
        help="default: the device name's bus (virtio-*-pci: q35 PCI, transitional unless"
        " disable-legacy=on; virtio-*-device: virtio-mmio, v2 unless -global"
        " virtio-mmio.force-legacy=on)",
    )
    run.add_argument("--seed", type=lambda s: int(s, 0), default=1, help="seed for reproducible entropy/data")
    run.add_argument("--timeout", type=positive_seconds, default=10.0, help="seconds before HANG")
    run.add_argument("--iommu", default="none", choices=("none", "virtio-iommu"), help="machine IOMMU")
    run.add_argument("--driver", help="driver generation (specs/profiles/drivers), default: current")
    run.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write JSON (to stdout alone if no PATH)"
    )
    run.add_argument(
        "--device-backend",
        choices=("ours", "qemu"),
        default="ours",
        help="whose device models the guest drives: ours (default) or QEMU's (qemu-system-x86_64"
        " under qtest)",
    )
    run.add_argument(
        "--processes",
        action="store_true",
        help="run host and guest as two child processes (default: one process, embedded)",
    )
    run.add_argument(
        "--link",
        choices=("unix", "tcp"),
        default=None,
        help="with --processes: Unix socket with shared RAM (default) or TCP with DMA messages",
    )


def add_qemu_options(
    p: argparse.ArgumentParser, *, ram_dest: str, machine_default: str | None = None, backends: bool = True
) -> None:
    """The QEMU-style options, spelled as QEMU does and as GNU does (-device / --device),
    the same on ``run`` and ``host``."""
    p.add_argument(
        "-device", "--device", dest="devices", action="append", default=[], metavar="DEV",
        help="QEMU -device, e.g. virtio-blk-pci,drive=d0 (repeatable; -device help, -device NAME,help)",
    )  # fmt: skip
    p.add_argument(
        "-M", "-machine", "--machine", dest="machine", default=machine_default, metavar="MACHINE",
        help="microvm|q35|virt[,acpi=on|off][,iommu=virtio][,x-mmio-hid=HID] (-M help, -M NAME,help)",
    )  # fmt: skip
    p.add_argument(
        "-global", "--global", dest="globals_", action="append", default=[], metavar="DRIVER.PROP=VALUE",
        help="QEMU -global: a default for every device of DRIVER (virtio-mmio.force-legacy=on)",
    )  # fmt: skip
    p.add_argument(
        "-m", "--ram", dest=ram_dest, type=_qemu_ram, default="64M",
        help="guest RAM in QEMU's -m syntax: [size=]N[K|M|G|T], a bare N is MiB (default 64M)",
    )  # fmt: skip
    p.add_argument(
        "--device-profile", metavar="GEN",
        help="with -device NAME,help: that device generation's defaults (specs/profiles/devices)",
    )  # fmt: skip
    if backends:
        for opt, what in (("drive", "file=IMG,if=none,id=ID"), ("netdev", "hubport,id=ID,hubid=N"),
                          ("chardev", "file,id=ID,path=PATH | stdio,id=ID")):  # fmt: skip
            p.add_argument(
                f"-{opt}", f"--{opt}", dest=f"{opt}s", action="append", default=[], metavar="OPTS",
                help=f"QEMU -{opt} {what}",
            )  # fmt: skip


def qemu_help(args: argparse.Namespace) -> str | None:
    """The text of ``-device help`` / ``-device NAME,help`` / ``-M help`` / ``-M NAME,help``
    if one was asked for (PropertyError for an unknown name)."""
    from virtio_sim.host.qdev_help import device_help, is_help, machine_help

    if args.machine and is_help(args.machine):
        return machine_help(args.machine)
    for dev in args.devices:
        if is_help(dev):
            return device_help(dev, getattr(args, "device_profile", None))
    return None


def _add_secret_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--secret-file",
        metavar="FILE",
        help=f"shared secret for TCP (a file only you can read; or set ${SECRET_ENV})",
    )
    p.add_argument("--secret", metavar="TEXT", help="shared secret on the command line (visible in ps)")


def _add_host_arguments(host: argparse.ArgumentParser) -> None:
    host.add_argument(
        "--listen",
        required=True,
        metavar="ADDR",
        help="unix:PATH (unix: for a fresh private directory) or tcp:HOST:PORT "
        "(tcp::PORT listens on 127.0.0.1)",
    )
    add_qemu_options(host, ram_dest="ram", machine_default="microvm", backends=False)
    host.add_argument(
        "--seed", type=lambda s: int(s, 0), default=None, help="seed the entropy of rng devices"
    )
    host.add_argument(
        "--max-guests",
        type=int,
        default=LIMITS.host.max_guests,
        help=f"concurrent guests ({LIMITS.host.max_guests})",
    )
    host.add_argument(
        "--max-unauthenticated",
        type=int,
        default=LIMITS.host.max_unauthenticated,
        help=f"concurrent connections still in the handshake; more get ERROR(BUSY) "
        f"({LIMITS.host.max_unauthenticated})",
    )
    host.add_argument("--once", action="store_true", help="serve one guest, then exit")
    host.add_argument(
        "--memory",
        choices=("auto", "shared", "dma"),
        default="auto",
        help="guest RAM: shared memfd (Unix only) or DMA messages; auto picks shared if possible",
    )
    host.add_argument(
        "--handshake-timeout", type=positive_seconds, default=LIMITS.host.handshake_deadline_ms / 1000,
        help="seconds from connect to an authenticated guest (5)",
    )  # fmt: skip
    host.add_argument(
        "--idle-timeout", type=positive_seconds, default=LIMITS.host.idle_timeout_ms / 1000,
        help="seconds an authenticated guest may send nothing before it is dropped (300)",
    )  # fmt: skip
    host.add_argument(
        "--frame-timeout", type=positive_seconds, default=5.0,
        help="seconds a started frame has to arrive completely (5)",
    )  # fmt: skip
    host.add_argument("--lifeline", action="store_true", help=argparse.SUPPRESS)
    _add_secret_options(host)


def _add_guest_arguments(guest: argparse.ArgumentParser) -> None:
    guest.add_argument("--connect", required=True, metavar="ADDR", help="unix:PATH or tcp:HOST:PORT")
    guest.add_argument("--workload", required=True, help="rng | rng-soak | blk-rw")
    guest.add_argument(
        "--driver", metavar="PROFILE", help="driver generation (specs/profiles/drivers), default: current"
    )
    guest.add_argument(
        "--seed",
        type=lambda s: None if s == "none" else int(s, 0),
        default=None,
        help="the host's rng seed / blk pattern seed, to verify data end to end",
    )
    guest.add_argument("--timeout", type=positive_seconds, default=10.0, help="seconds before HANG")
    guest.add_argument(
        "--pci-force-legacy",
        action="store_true",
        help="drive transitional virtio-pci devices through their legacy interface "
        "(Linux's virtio_pci.force_legacy=1)",
    )
    guest.add_argument("--json", action="store_true", help="print the result as JSON")
    guest.add_argument("--lifeline", action="store_true", help=argparse.SUPPRESS)
    _add_secret_options(guest)


class UsageError(Exception):
    pass


def _load_secret(args: argparse.Namespace) -> bytes | None:
    if args.secret_file:
        try:
            st = os.stat(args.secret_file)
            if st.st_mode & 0o077:
                raise UsageError(
                    f"secret file {args.secret_file} is readable by others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
                )
            with open(args.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read secret file {args.secret_file}: {e.strerror}") from None
    elif args.secret:
        secret = args.secret.encode()
    elif os.environ.get(SECRET_ENV):
        secret = os.environ[SECRET_ENV].encode()
    else:
        return None
    if not secret:
        raise UsageError("the shared secret is empty")
    return secret


def print_human(result: RunResult, console: Console | None = None) -> None:
    """The result for people. Device names, drive paths and details are data (a drive path
    or a host's ERROR message may hold ``[/x]``): rich Text throughout, never markup."""
    if console is None and not sys.stdout.isatty():
        _print_plain(result)
        return
    from rich.text import Text

    from virtio_sim.console import output_console
    from virtio_sim.outcome import Outcome
    from virtio_sim.peertext import plain

    console = console or output_console()
    colour = "green" if result.outcome is Outcome.OK else "red"
    head = Text.assemble(
        (str(result.outcome), f"bold {colour}"), " ", plain(result.device), " over ", plain(result.transport)
    )
    console.print(head)
    for name, value in _rows(result):
        console.print(Text.assemble(f"  {name:<10} ", plain(value)))


def _rows(result: RunResult) -> list[tuple[str, str]]:
    negotiated = ", ".join(result.negotiated) or "-"
    rows = [
        ("offered", f"{result.device_features:#x}"),
        ("acked", f"{result.driver_features:#x}  ({negotiated})"),
        ("status", " -> ".join(result.status_trace) or "-"),
    ]
    if result.ring:
        rows.append(("ring", f"{result.ring.get('format')}, barriers {result.ring.get('barriers')}"))
    rows.append(("detail", result.detail))
    return rows


def _print_plain(result: RunResult) -> None:
    """What the rich console prints off a terminal (no styles, no wrapping), without
    importing rich: the same peer-text escaping, tabs expanded as rich expands them."""

    head = f"{result.outcome} {peer_text(result.device)} over {peer_text(result.transport)}"
    print(head.expandtabs(8))
    for name, value in _rows(result):
        print(f"  {name:<10} {peer_text(value)}".expandtabs(8))


def _error(message: str) -> None:
    print(f"virtio-sim: error: {message}", file=sys.stderr)


def _host(args: argparse.Namespace) -> int:
    from virtio_sim.host.process import HostOptions, host_main
    from virtio_sim.sockets import AddressError, parse_address

    try:
        opts = HostOptions(
            listen=parse_address(args.listen, listen=True),
            devices=args.devices,
            machine=args.machine,
            globals_=args.globals_,
            ram_size=args.ram,
            seed=args.seed,
            secret=_load_secret(args),
            max_guests=args.max_guests,
            once=args.once,
            memory=args.memory,
            handshake_timeout=args.handshake_timeout,
            frame_timeout=args.frame_timeout,
            idle_timeout=args.idle_timeout,
            max_unauthenticated=args.max_unauthenticated,
            lifeline=args.lifeline,
        )
    except (AddressError, UsageError) as e:
        _error(str(e))
        return EXIT_USAGE
    try:
        return host_main(opts)
    except KeyboardInterrupt:  # Ctrl-C before the host installed its own handler
        return EXIT_INTERRUPTED


def _guest(args: argparse.Namespace) -> int:
    import trio

    from virtio_sim.guest.process import GuestOptions, guest_main, guest_policy_for
    from virtio_sim.guest.workloads import WORKLOADS
    from virtio_sim.profiles import ProfileError
    from virtio_sim.sockets import AddressError, parse_address

    try:
        if args.workload not in WORKLOADS:
            raise UsageError(f"unknown workload {args.workload!r} (choose from {', '.join(WORKLOADS)})")
        try:
            guest_policy_for(args.driver)
        except ProfileError as e:
            raise UsageError(str(e)) from None
        opts = GuestOptions(
            connect=parse_address(args.connect, listen=False),
            workload=args.workload,
            profile=args.driver,
            seed=args.seed,
            timeout=args.timeout,
            secret=_load_secret(args),
            lifeline=args.lifeline,
            pci_force_legacy=args.pci_force_legacy,
        )
    except (AddressError, UsageError) as e:
        _error(str(e))
        return EXIT_USAGE
    try:
        done = trio.run(guest_main, opts)
    except KeyboardInterrupt:  # Ctrl-C before the guest installed its own handler
        return EXIT_INTERRUPTED
    if done.result is not None:
        if args.json:
            print(json.dumps(done.result.to_json(), indent=2), flush=True)
        else:
            print_human(done.result)
    if done.message:
        print(f"virtio-sim guest: {peer_text(done.message)}", file=sys.stderr, flush=True)
    return done.status


def _run_record(
    result: RunResult, cfg: RunConfig, driver: str | None, backend: str, seconds: float
) -> dict[str, Any]:
    """``run --json``: the record every matrix cell has too (docs/json-schema.md)."""
    from virtio_sim.result_record import result_record

    machine = cfg.machine or ("q35" if cfg.transport.startswith("pci") else "microvm")
    # the transport the run ended up on (--transport mmio resolves to mmio-v1 or mmio-v2)
    transport = result.transport or cfg.transport
    return result_record(
        result, transport=transport, machine=machine, workload=cfg.workload, iommu=cfg.iommu,
        ram=_ram_text(cfg.ram_size), device_option=cfg.device, driver=driver, device_backend=backend,
        seconds=seconds,
    )  # fmt: skip


def _ram_text(size: int) -> str:
    """Bytes in QEMU's -m syntax, as the matrix's ram axis writes them (64M, 4G)."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _run_processes(cfg: RunConfig, link: str, driver: str | None, as_json: str | None) -> int:
    import trio

    from virtio_sim.orchestration.processes import run_processes

    start = time.perf_counter()
    try:
        done = trio.run(run_processes, cfg, link, driver)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if done.result is not None:
        if as_json:
            record = _run_record(done.result, cfg, driver, "ours", time.perf_counter() - start)
            _write_json(record, as_json)
        if as_json != "-":
            print_human(done.result)
    if done.message:
        print(f"virtio-sim: {peer_text(done.message)}", file=sys.stderr, flush=True)
        for name, text in (("host", done.host_stderr), ("guest", done.guest_stderr)):
            for line in text.strip().splitlines()[-5:]:
                print(f"  [{name}] {peer_text(line)}", file=sys.stderr)
    return done.status


def _bench(argv: list[str]) -> int:
    """``virtio-sim bench ...`` is ``python -m benchmarks ...`` from the source tree."""
    import importlib

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isdir(os.path.join(root, "benchmarks")) and root not in sys.path:
        sys.path.insert(0, root)
    try:
        bench = importlib.import_module("benchmarks.__main__")
    except ImportError as e:
        print(f"virtio-sim bench: the benchmarks package is not available ({e})", file=sys.stderr)
        return EXIT_USAGE
    status: int = bench.main(argv)
    return status


def _run_config(args: argparse.Namespace) -> RunConfig:
    """``run``'s options as a RunConfig; ConfigError for what QEMU would refuse to parse."""
    from virtio_sim.host.build import check_global, default_transport
    from virtio_sim.host.devices.base import PropertyError
    from virtio_sim.host.qemu_backends import Backends, add_chardev, add_drive, add_netdev
    from virtio_sim.orchestration.embedded import ConfigError, RunConfig

    globals_: dict[str, str] = {}
    backends = Backends()
    try:
        for g in args.globals_:
            key, eq, value = g.partition("=")
            if not eq:
                raise PropertyError(f"Invalid -global '{g}': expected driver.property=value")
            check_global(key, value)
            globals_[key] = value
        for add, values in (
            (add_drive, args.drives),
            (add_netdev, args.netdevs),
            (add_chardev, args.chardevs),
        ):
            for text in values:
                add(backends, text)
        transport = args.transport or default_transport(args.devices, globals_)
    except PropertyError as e:
        raise ConfigError(str(e)) from None
    cfg = RunConfig(
        device=args.devices[0],
        extra_devices=args.devices[1:],
        workload=args.workload,
        transport=transport,
        ram_size=args.ram,
        seed=args.seed,
        timeout=args.timeout,
        iommu=args.iommu,
        machine=args.machine,
        globals=globals_,
        backends=backends,
        scratch_disks=False,  # as QEMU: a virtio-blk device needs drive=
    )
    if args.driver:  # the profile code only then: a run without --driver uses the default policy
        from virtio_sim.guest.profile import guest_policy
        from virtio_sim.profiles import ProfileError, load_driver_profile

        try:
            cfg.guest = guest_policy(load_driver_profile(args.driver))
        except ProfileError as e:
            raise ConfigError(str(e)) from None
    return cfg


def _inline_backends(cfg: RunConfig) -> None:
    """The host process gets device lines only: put what drive=/netdev=/chardev= name
    into them."""
    from virtio_sim.host.devices.base import PropertyError
    from virtio_sim.host.qdev import format_device_option, model_name, parse_device_option
    from virtio_sim.host.qemu_backends import resolve
    from virtio_sim.orchestration.embedded import ConfigError

    lines = []
    try:
        for text in [cfg.device, *cfg.extra_devices]:
            spec = parse_device_option(text)
            resolve(spec.driver, model_name(spec.driver), spec.props, cfg.backends)
            lines.append(format_device_option(spec))
    except PropertyError as e:
        raise ConfigError(str(e)) from None
    cfg.device, cfg.extra_devices = lines[0], lines[1:]


def _write_json(data: object, dest: str) -> None:
    """``--json`` alone: to stdout; ``--json PATH``: to that file."""
    text = json.dumps(data, indent=2)
    if dest == "-":
        print(text, flush=True)
    else:
        with open(dest, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def _run(args: argparse.Namespace) -> int:
    from virtio_sim.orchestration.embedded import ConfigError, run_embedded_sync
    from virtio_sim.outcome import Outcome

    if not args.devices:
        _error("the following arguments are required: -device/--device")
        return EXIT_USAGE
    if not args.workload:
        _error("the following arguments are required: --workload")
        return EXIT_USAGE
    if args.link and not args.processes:
        _error("--link needs --processes")
        return EXIT_USAGE
    if args.device_backend == "qemu" and args.processes:
        _error("--device-backend qemu runs the guest in this process (no --processes)")
        return EXIT_USAGE
    start = time.perf_counter()
    try:
        cfg = _run_config(args)
        if args.processes:
            _inline_backends(cfg)
            return _run_processes(cfg, args.link or "unix", args.driver, args.json)
        if args.device_backend == "qemu":
            import trio

            from virtio_sim.orchestration.qemu.run import run_qemu

            qemu_machine = args.machine.split(",")[0] if args.machine else None
            result = trio.run(lambda: run_qemu(cfg, machine=qemu_machine))
        else:
            result = run_embedded_sync(cfg)
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    if args.json:
        seconds = time.perf_counter() - start
        _write_json(_run_record(result, cfg, args.driver, args.device_backend, seconds), args.json)
    if args.json != "-":
        print_human(result)
    return 0 if result.outcome is Outcome.OK else 1


def main(argv: Sequence[str] | None = None) -> int:
    """The command; a reader that closed our stdout (``| head -c1``) ends it quietly.

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError wherever it
    happens. That is not an error of the run: stdout is pointed at /dev/null (so the flush
    at interpreter exit cannot raise again) and the status is 141, what a shell reports for
    a C tool killed by SIGPIPE (``yes | head``), so ``set -o pipefail`` scripts see it.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


def _freeze_after_imports(command: str) -> None:
    """Import the stack the command runs, then freeze what start-up allocated
    (virtio_sim/gcfreeze.py): its full GC passes then skip every module object."""
    from virtio_sim.gcfreeze import freeze_startup

    if command == "guest":
        import virtio_sim.guest.process
    elif command == "host":
        import virtio_sim.host.process
    else:
        import virtio_sim.orchestration.embedded  # noqa: F401  (host and guest stack)
    freeze_startup()


def _main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:  # every option after it belongs to the benchmarks
        return _bench(args_list[1:])
    command = next((a for a in args_list if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if args.command in ("run", "host", "guest"):
        _freeze_after_imports(args.command)
    if args.command in ("run", "host"):
        from virtio_sim.host.devices.base import PropertyError

        try:
            text = qemu_help(args)
        except PropertyError as e:
            _error(str(e))
            return EXIT_USAGE
        if text is not None:
            print(text)
            return 0
    if args.command == "host":
        return _host(args)
    if args.command == "guest":
        return _guest(args)
    if args.command == "matrix":
        from virtio_sim.orchestration.matrix.cli import cmd_matrix

        return cmd_matrix(args)
    if args.command == "conformance":
        from virtio_sim.orchestration.conformance.cli import cmd_conformance

        return cmd_conformance(args)
    if args.command == "vhost-user":
        from virtio_sim.host.vhost_user_cli import cmd_vhost_user

        return cmd_vhost_user(args)
    if args.command in ("attack", "fuzz"):
        from virtio_sim.orchestration.attacks.cli import cmd_attack, cmd_fuzz

        return cmd_attack(args) if args.command == "attack" else cmd_fuzz(args)
    if args.command == "compat":
        from virtio_sim.orchestration.compat_cli import cmd_compat

        return cmd_compat(args)
    if args.command == "run":
        return _run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
