"""`edgesmith emulators`: the emulated arm64 board (sshd) and phone (adb) on loopback."""
from __future__ import annotations

import json
from pathlib import Path


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
        print(json.dumps(status, indent=1))
        return 0 if status["running"] else 1
    return 0



def add_parser(sub) -> None:
    e = sub.add_parser("emulators", help="start/stop the emulated arm64 board (sshd) and phone (adb) on loopback")
    e.add_argument("action", choices=["start", "stop", "status"])
    e.add_argument("--free-ports", action="store_true", help="start: let the OS pick free ports instead of "
                   "2222 (ssh), 5557 (phone) and 5038 (adb server); pair with --devices-out")
    e.add_argument("--devices-out", type=Path, metavar="FILE", help="start: write a devices.yaml naming the "
                   "running devices and their real ports")
    e.set_defaults(func=cmd_emulators)
