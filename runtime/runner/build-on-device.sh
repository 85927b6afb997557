#!/bin/sh
# build-on-device.sh — run on the device (macOS arm64, or a Linux board) with a C++ compiler:
# links BUNDLE/lib/model.tar (TVM's objects: host code + the packed GPU kernels) into
# BUNDLE/lib/model.so, and builds BUNDLE/bin/runner from bin/src/ against the runtime
# libraries next to it. Then: bin/runner generate BUNDLE --tokens 1,2,3 -n 16
#   CXX    the compiler (default c++; on macOS the Xcode command line tools' clang++)
set -eu
BIN=$(cd "$(dirname "$0")" && pwd)
BUNDLE=$(dirname "$BIN")
CXX=${CXX:-c++}
command -v "$CXX" >/dev/null || { echo "build-on-device.sh: no C++ compiler '$CXX'; install one (macOS: xcode-select --install) or set CXX" >&2; exit 1; }
TVM_VERSION=$(sed -n 's/^ *"tvm_version": "\([^"]*\)".*/\1/p' "$BUNDLE/manifest.json" | head -n 1)
[ -n "$TVM_VERSION" ] || { echo "build-on-device.sh: $BUNDLE/manifest.json names no tvm_version" >&2; exit 1; }
case $(uname -s) in
  Darwin) SHARED="-dynamiclib -undefined dynamic_lookup"; RPATH="-Wl,-rpath,@executable_path" ;;
  *) SHARED="-shared"; RPATH="-Wl,-rpath,\$ORIGIN" ;;
esac
OBJ=$(mktemp -d)
trap 'rm -rf "$OBJ"' EXIT
tar -xf "$BUNDLE/lib/model.tar" -C "$OBJ"
# shellcheck disable=SC2086  # SHARED is a list of flags
"$CXX" $SHARED -o "$BUNDLE/lib/model.so" "$OBJ"/*.o
"$CXX" -std=c++17 -O2 "-DEDGESMITH_TVM_VERSION=\"$TVM_VERSION\"" -I"$BIN/src/include" \
  "$BIN/src/runner.cc" -o "$BIN/runner" -L"$BIN" -ltvm_ffi -ldl "$RPATH"
echo "build-on-device.sh: built $BUNDLE/lib/model.so and $BIN/runner (TVM $TVM_VERSION)"
