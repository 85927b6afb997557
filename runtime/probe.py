"""What a device is, from one shell command that works on Linux and on Android's toybox:
arch, OS, memory, storage, cores and their frequencies, CPU model and ISA flags, thermal zones,
GPU API libraries; several devices probed at once (`edgesmith devices`), each failure that
device's own row. (Running a bundle on a device, or here, is runtime/session.py's job.)

What it needs of a transport (base.Transport): run() of one POSIX shell script using SHELL_TOOLS.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from edgesmith.errors import one_line
from edgesmith.runtime.devices import Device
from edgesmith.runtime.transports import open_transport
from edgesmith.runtime.transports.base import Transport, shell_join
from edgesmith.targets.presets import get_preset

# Where Vulkan and OpenCL drivers live on Android and on Linux boards; device nodes of GPU drivers.
GPU_PATHS = {
    "vulkan": ["/system/lib64/libvulkan.so", "/vendor/lib64/libvulkan.so", "/usr/lib/*/libvulkan.so.1",
               "/usr/lib64/libvulkan.so.1", "/usr/lib/libvulkan.so.1"],
    "opencl": ["/vendor/lib64/libOpenCL.so", "/system/vendor/lib64/libOpenCL.so", "/vendor/lib64/libmali.so",
               "/usr/lib/*/libOpenCL.so.1", "/usr/lib64/libOpenCL.so.1", "/usr/lib/libOpenCL.so.1",
               "/usr/lib/*/libmali.so"],
}


SHELL_TOOLS = ("sh", "uname", "grep", "sed", "tr", "cat", "df", "tail", "dirname")


# Vulkan drivers by their ICD manifest (the Vulkan loader reads /usr/share/vulkan/icd.d and
# /etc/vulkan/icd.d): what a linux-vulkan / arm64-linux-vulkan bundle's adapter will be.
VULKAN_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")
VULKAN_DRIVERS = {"lvp": "lavapipe (Mesa, CPU)", "nvidia": "NVIDIA", "radeon": "RADV (AMD)", "amd": "AMDVLK",
                  "intel": "ANV (Intel)", "intel_hasvk": "HasVK (older Intel)", "broadcom": "V3DV (Raspberry Pi)",
                  "panfrost": "PanVK (Mali)", "freedreno": "turnip (Adreno)", "asahi": "Honeykrisp (Apple)",
                  "nouveau": "NVK (NVIDIA, Mesa)", "virtio": "Venus (virtio)", "powervr_mesa": "PowerVR"}


def vulkan_driver(icd_file: str) -> str:
    """'lvp_icd.x86_64.json' -> 'lavapipe (Mesa, CPU)'; an unknown driver keeps its file's stem."""
    stem = icd_file.split("_icd")[0] if "_icd" in icd_file else icd_file.rsplit(".json", 1)[0]
    return VULKAN_DRIVERS.get(stem, stem)


def probe_script(workdir: str) -> str:
    gpu = " ".join(f"{api}={p}" for api, paths in GPU_PATHS.items() for p in paths)
    return "\n".join([
        'echo "uname=$(uname -s -r -m 2>/dev/null)"',
        'if command -v getprop >/dev/null 2>&1; then echo "abi=$(getprop ro.product.cpu.abi)"; '
        'echo "android=$(getprop ro.build.version.release)"; echo "model=$(getprop ro.product.model)"; fi',
        '[ -r /etc/os-release ] && sed -n "s/^PRETTY_NAME=/os=/p" /etc/os-release | tr -d \'"\'',
        "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null | tr -d ' ' | sed 's/kB$//;s/:/=/'",
        'echo "cores=$(grep -c ^processor /proc/cpuinfo 2>/dev/null)"',
        # x86: "model name"; ARM: "CPU implementer"/"CPU part" (and sometimes "Hardware")
        "grep -m 3 -E '^(model name|Hardware|CPU implementer|CPU part)' /proc/cpuinfo 2>/dev/null | "
        "sed 's/[[:space:]]*:[[:space:]]*/=/;s/^/cpuinfo_/'",
        "grep -m 1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | sed 's/^[^:]*:[[:space:]]*/isa=/'",
        'for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do '
        '[ -r "$f" ] && echo "freq=$(cat "$f")"; done',
        'for c in /sys/devices/system/cpu/cpu0/cache/index*; do [ -r "$c/size" ] && '
        'echo "cache=$(cat "$c/level" 2>/dev/null):$(cat "$c/type" 2>/dev/null):$(cat "$c/size")"; done',
        'for z in /sys/class/thermal/thermal_zone*; do [ -r "$z/temp" ] && '
        'echo "thermal=$(cat "$z/type" 2>/dev/null):$(cat "$z/temp" 2>/dev/null)"; done',
        f"d={shell_join([workdir])}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; "
        'echo "df=$(df -Pk "$d" 2>/dev/null | tail -n 1)"',
        f'for e in {gpu}; do for p in ${{e#*=}}; do [ -e "$p" ] && echo "gpu=${{e%%=*}}:$p"; done; done',
        f'for f in {" ".join(d + "/*.json" for d in VULKAN_ICD_DIRS)}; do [ -e "$f" ] && '
        'echo "vulkan_icd=${f##*/}"; done',
        "true",
    ])


def parse_probe(text: str) -> dict:
    info: dict = {"freqs_mhz": [], "thermal": {}, "gpu_apis": {}}
    caches: list[tuple[int, int]] = []  # (level, bytes) of the data and unified caches
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key == "uname":
            parts = value.split()
            info["kernel"] = " ".join(parts[:2])
            info["machine"] = parts[-1] if parts else ""
        elif key in ("abi", "android", "model", "os") and value:
            info[key] = value
        elif key == "MemTotal":
            info["mem_total_mb"] = int(value) // 1024
        elif key == "MemAvailable":
            info["mem_free_mb"] = int(value) // 1024
        elif key == "cores" and value.isdigit():
            info["cores"] = int(value)
        elif key.startswith("cpuinfo_") and value:
            info.setdefault("cpu", {})[key[len("cpuinfo_"):]] = value
        elif key == "isa":
            info["isa_flags"] = value.split()
        elif key == "freq" and value.isdigit():
            info["freqs_mhz"].append(int(value) // 1000)
        elif key == "thermal":
            zone, _, temp = value.rpartition(":")
            if temp.lstrip("-").isdigit():
                t = int(temp)
                info["thermal"][zone or f"zone{len(info['thermal'])}"] = t / 1000 if abs(t) > 200 else t
        elif key == "cache":  # level:type:size, e.g. 3:Unified:32768K; the largest data cache is the LLC
            level, _, rest = value.partition(":")
            kind, _, size = rest.partition(":")
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            digits = size.rstrip("KMG")
            if kind != "Instruction" and level.isdigit() and digits.isdigit():
                caches.append((int(level), int(digits) * scale))
        elif key == "df":
            fields = value.split()
            if len(fields) >= 4 and fields[3].isdigit():
                info["storage_free_mb"] = int(fields[3]) // 1024
        elif key == "gpu":
            api, _, path = value.partition(":")
            info["gpu_apis"].setdefault(api, []).append(path)
        elif key == "vulkan_icd" and value:
            driver = vulkan_driver(value)
            if driver not in info.setdefault("vulkan_drivers", []):
                info["vulkan_drivers"].append(driver)
    if caches:
        info["llc_bytes"] = max(caches)[1]  # the highest level (the largest of it)
    return info


_ABI = {"arm64-v8a": "aarch64", "armeabi-v7a": "armv7", "x86_64": "x86_64", "x86": "i686"}


def probe_transport(transport: Transport, *, timeout: float) -> dict:
    device = transport.device
    transport.require_shell("probing", SHELL_TOOLS)
    out = transport.check(probe_script(device.workdir), timeout=timeout, what="probing")
    info = parse_probe(out)
    native = _ABI.get(info.get("abi", ""), info.get("machine", "?"))
    if device.exec_wrapper:  # qemu on another machine: say both
        info["arch"] = get_preset(device.target).arch
        info["emulated"] = f"{device.exec_wrapper[0]} on {info.get('machine', '?')}"
    else:
        info["arch"] = native
        info["emulated"] = None
    info["os"] = f"Android {info['android']}" if info.get("android") else info.get("os", info.get("kernel", "?"))
    if device.transport == "local" and info.get("vulkan_drivers"):
        # This machine: the adapters themselves (wgpu, the same wgpu-native the bundles ship), not
        # just the drivers installed; elsewhere the ICD files are what a shell can see.
        adapters = local_vulkan_adapters()
        if adapters is not None:
            info["vulkan_adapters"] = adapters
    return info


def local_vulkan_adapters() -> list[str] | None:
    """'name (type)' of each Vulkan adapter wgpu-native finds on this machine; None if wgpu cannot say."""
    import os

    # as the WebGPU plug-in does (runtime/runner/webgpu/context.cc): no Wayland session, no libwayland noise
    quiet = "WAYLAND_DISPLAY" not in os.environ and "XDG_RUNTIME_DIR" not in os.environ
    if quiet:
        os.environ["WAYLAND_DISPLAY"] = "/nonexistent/edgesmith-no-wayland"
    try:
        import wgpu

        found = []
        for adapter in wgpu.gpu.enumerate_adapters_sync():
            info = adapter.info
            if info.get("backend_type") == "Vulkan":
                found.append(f"{info.get('device', '?')} ({str(info.get('adapter_type', '?')).lower()})")
        return found
    except Exception:  # noqa: BLE001 - a probe reports what it can; the bundle's run names any failure
        return None
    finally:
        if quiet:
            os.environ.pop("WAYLAND_DISPLAY", None)


def _api_label(api: str, probe: dict) -> str:
    """'vulkan (llvmpipe (LLVM 15.0.6, 256 bits) (cpu))': this machine's Vulkan adapters; on another
    device the drivers installed beside its loader ('vulkan (drivers: V3DV (Raspberry Pi))')."""
    if api != "vulkan":
        return api
    if probe.get("vulkan_adapters") is not None:
        return f"vulkan ({', '.join(probe['vulkan_adapters']) or 'no adapter'})"
    drivers = probe.get("vulkan_drivers")
    return f"vulkan (drivers: {', '.join(drivers)})" if drivers else api


def format_table(probes: list[dict]) -> str:
    header = ["device", "transport", "target", "reachable", "arch", "os", "cores", "max MHz",
              "RAM free/total MB", "storage free MB", "thermal °C", "GPU APIs"]
    rows = []
    for p in probes:
        if not p.get("reachable"):
            rows.append([p["name"], p.get("transport", ""), p.get("target", ""), "no", "", "", "", "", "", "", "", ""])
            continue
        freqs = p.get("freqs_mhz") or []
        thermal = p.get("thermal") or {}
        arch = p.get("arch", "?") + (" (emulated)" if p.get("emulated") else "")
        rows.append([
            p["name"], p.get("transport", ""), p.get("target", ""), "yes", arch, p.get("os", "?"),
            str(p.get("cores", "?")),
            (f"{min(freqs)}-{max(freqs)}" if min(freqs) != max(freqs) else str(freqs[0])) if freqs else "-",
            f"{p.get('mem_free_mb', '?')}/{p.get('mem_total_mb', '?')}",
            str(p.get("storage_free_mb", "?")),
            f"{max(thermal.values()):.0f} ({len(thermal)} zones)" if thermal else "-",
            ", ".join(_api_label(api, p) for api in sorted(p.get("gpu_apis") or {})) or "none",
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    errors = [f"{p['name']}: {p['error']}" for p in probes if not p.get("reachable") and p.get("error")]
    return "\n".join(lines + ([""] + errors if errors else []))


# ------------------------------------------------------------------ several devices at once

def probe_devices(devices: list[Device], *, timeout: float) -> list[dict]:
    """Probe every device at once; a failure is that device's row (reachable False, error), never a raise."""

    def one(device: Device) -> dict:
        started = time.monotonic()
        try:
            with open_transport(device) as transport:
                info = transport.probe(timeout=timeout)
            row = {"name": device.name, "reachable": True, "error": None, **info}
        except Exception as err:  # noqa: BLE001 - one device's failure is its own row
            row = {"name": device.name, "reachable": False, "error": one_line(err)}
        row.update(transport=device.transport, target=device.target, where=device.where,
                   probe_s=round(time.monotonic() - started, 3))
        return row

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(devices))) as pool:
        return list(pool.map(one, devices))


def format_devices_table(probes: list[dict]) -> str:
    return format_table(probes)
