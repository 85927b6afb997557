"""`edgesmith emulators`: the emulated arm64 board (sshd) and phone (adb) on loopback."""
from __future__ import annotations

import json
from pathlib import Path

from edgesmith.cli.args import format_option


def cmd_emulators(args) -> int:
    from edgesmith.runtime import emulated

    if args.action == "start":
        ports = {"ssh": 0, "adb_device": 0, "adb_server": 0} if args.free_ports else None
        status = emulated.start_emulators(ports=ports)
        print(f"emulated devices running on loopback: board ssh port {status['ports']['ssh']}, phone adb "
              f"{status['host']}:{status['ports']['adb_device']} (adb server port {status['ports']['adb_server']}); "
              f"state in {status['state_dir']}")
        if args.devices_out:
            print(f"devices file: {emulated.write_devices_file(status, args.devices_out)} "
                  "(use it with --devices or EDGESMITH_DEVICES)")
    elif args.action == "stop":
        emulated.stop_emulators()
        print("emulated devices stopped")
    else:
        status = emulated.emulator_status()
        if args.format == "json":
            print(json.dumps(status, indent=1))
        else:
            print(format_status(status))
    return 0  # it reported: stopped is an answer, not a failure


def format_status(status: dict) -> str:
    """The board and the phone as rows: running or not, where, the process; then what to type."""
    ports, alive, pids = status.get("ports", {}), status.get("alive", {}), status.get("pids", {})
    host = status.get("host", "127.0.0.1")
    rows = [("device", "state", "address", "process")]
    # devd (runtime/emulated/devd.py) serves both: the board's sshd port and the phone's adb device port.
    for device, proc, where in (("board", "devd", f"ssh {host}:{ports['ssh']}" if "ssh" in ports else "-"),
                                ("phone", "devd", f"adb {host}:{ports['adb_device']}" if "adb_device" in ports else "-"),
                                ("adb server", "adb_server",
                                 f"port {ports['adb_server']}" if "adb_server" in ports else "-")):
        state = "running" if alive.get(proc) else ("stopped" if proc not in pids else "dead")
        rows.append((device, state, where if state == "running" else "-",
                     f"{proc} pid {pids[proc]}" if proc in pids and alive.get(proc) else "-"))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows]
    lines.append(f"state: {status.get('state_dir')}")
    if not status.get("running"):
        lines.append("start them: edgesmith emulators start")
    return "\n".join(lines)



def add_parser(sub) -> None:
    e = sub.add_parser("emulators", help="start/stop the emulated arm64 board (sshd) and phone (adb) on loopback")
    e.add_argument("action", choices=["start", "stop", "status"], help="start: the board and the phone on "
                   "loopback; stop: them; status: a table of what runs where (exit 0 either way)")
    format_option(e, ("table", "json"), "what status prints")
    e.add_argument("--free-ports", action="store_true", help="start: let the OS pick free ports instead of "
                   "2222 (ssh), 5557 (phone) and 5038 (adb server); pair with --devices-out")
    e.add_argument("--devices-out", type=Path, metavar="FILE", help="start: write a devices.yaml naming the "
                   "running devices and their real ports")
    e.set_defaults(func=cmd_emulators)
