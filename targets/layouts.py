"""Bundle layouts: how a bundle's runner ships and starts on one kind of device. A preset names its
layout; the manifest records it (target.layout); everything that used to branch on the name asks
its `Layout`: the start command, the files shipped beside the runner, whether a device can run the
bundle, and how this x86_64 machine runs it under qemu.

| layout        | the runner is started as (in BUNDLE)                 | bin/ also holds (arm64)          | qemu here                     |
| ------------- | ---------------------------------------------------- | -------------------------------- | ----------------------------- |
| linux         | ./bin/runner ...                                     | libstdc++, libgcc_s (cross root) | qemu-aarch64-static -L ROOT   |
| android-glibc | ./bin/ld-linux-aarch64.so.1 --library-path ./bin     | + the glibc loader and libraries | qemu-aarch64-static (the      |
|               | ./bin/runner ...                                     | (a phone has no glibc)           | bundle brings its libc)       |
| android-ndk   | ./bin/runner ... (bionic; libstdc++ linked in)       | -                                | none: bionic does not run here |
| macos         | bin/runner, linked on the device (build-on-device.sh) | its dylibs, the runner's source  | none                          |

ROOT: the aarch64 cross compiler's sysroot (/usr/aarch64-linux-gnu), the glibc a board has.
A new layout is one entry in LAYOUTS.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

from edgesmith.errors import TargetError, unknown_name

QEMU_AARCH64 = "qemu-aarch64-static"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
LOADER = "ld-linux-aarch64.so.1"
GCC_RUNTIME = ("libstdc++.so.6", "libgcc_s.so.1")  # not part of glibc: a board with an older GCC runtime
GLIBC_FILES = (LOADER, "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0")


@dataclass(frozen=True)
class Layout:
    name: str
    system: str  # the C library a device of this layout has: "glibc" | "bionic" | "macos"
    needs: str | None  # the one the runner links to and the device must have; None: it ships its own
    device_kind: str  # for messages: "an Android device"
    loader: str | None = None  # the glibc loader shipped in bin/ that starts the runner
    shipped_libs: tuple[str, ...] = ()  # from the toolchain's sysroot into bin/, for a cross build
    static_libstdcxx: bool = False  # the runner links libstdc++ in (the NDK's)
    built_on_device: bool = False  # bin/ holds the runner's source and a build script, no runner
    qemu_sysroot: bool = True  # under qemu-user, libraries come from the cross sysroot (-L)
    runs_under_qemu: bool = True  # qemu-user here can run its binaries at all (not bionic, not Mach-O)

    def start(self, bindir: str) -> list[str]:
        """argv that starts bindir/runner: directly, or through the glibc loader shipped next to
        it (posix paths, so the same argv serves remote devices)."""
        runner = posixpath.join(bindir, "runner")
        if self.loader:
            return [posixpath.join(bindir, self.loader), "--library-path", bindir, runner]
        return [runner]

    def runs(self, bundle: Layout) -> bool:
        """Whether a device of this layout can start a bundle of `bundle`'s layout (same arch)."""
        return bundle.needs is None or bundle.needs == self.system

    def refusal(self, bundle: Layout, built_for: str) -> str:
        """Why a device of this layout cannot run a `bundle`-layout bundle of target `built_for`
        (runs() is False)."""
        need = {"glibc": "a glibc Linux", "bionic": "Android", "macos": "macOS"}.get(bundle.needs, bundle.needs)
        return f"is {self.device_kind} and the bundle (target {built_for}) needs {need}"

    def qemu_wrapper(self, arch: str, *, installed: bool = True) -> tuple[str, ...]:
        """How this machine runs `arch` binaries of this layout: () natively, else qemu-user (with
        the cross sysroot when the bundle uses the system's glibc). A one-line TargetError when it
        cannot (installed: qemu-user must be on this machine now)."""
        import shutil

        from .presets import host_arch

        if arch == host_arch():
            return ()
        if arch != "aarch64":
            raise TargetError(f"the bundle is for {arch}; this machine ({host_arch()}) cannot run it")
        if not self.runs_under_qemu:
            raise TargetError(f"the bundle (aarch64, layout {self.name}) cannot run under qemu on this machine; "
                              "run it on its device (--device)")
        if installed and shutil.which(QEMU_AARCH64) is None:
            raise TargetError(f"the bundle is for aarch64 and {QEMU_AARCH64} is not installed; "
                              "apt-get install qemu-user-static")
        return (QEMU_AARCH64, "-L", AARCH64_SYSROOT) if self.qemu_sysroot else (QEMU_AARCH64,)

    def sysroot_files(self, cross: bool) -> tuple[str, ...]:
        """The toolchain sysroot's libraries a bundle ships in bin/ (cross: built for another arch)."""
        return self.shipped_libs if cross else ()


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in [
    Layout("linux", system="glibc", needs="glibc", device_kind="a glibc Linux device", shipped_libs=GCC_RUNTIME),
    # A phone has no glibc: the runner brings the loader and the libraries (Android's kernel runs
    # glibc programs started that way), so qemu needs no sysroot either.
    Layout("android-glibc", system="bionic", needs=None, device_kind="an Android device", loader=LOADER,
           shipped_libs=GCC_RUNTIME + GLIBC_FILES, qemu_sysroot=False),
    Layout("android-ndk", system="bionic", needs="bionic", device_kind="an Android device", static_libstdcxx=True,
           runs_under_qemu=False),
    Layout("macos", system="macos", needs="macos", device_kind="a Mac or iPhone", built_on_device=True,
           runs_under_qemu=False),
]}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise TargetError(unknown_name("bundle layout", name, LAYOUTS)) from None
