#!/usr/bin/env bash
# Builds libloopai (release) and installs it with its header and pkg-config file:
#   scripts/install-c-lib.sh PREFIX          (e.g. /usr/local, or $HOME/.local)
# gives
#   PREFIX/lib/libloopai.so.VERSION          the shared library (SONAME libloopai.so.0)
#   PREFIX/lib/libloopai.so.0 -> libloopai.so.VERSION   what programs load at run time
#   PREFIX/lib/libloopai.so   -> libloopai.so.0         what `-lloopai` links against
#   PREFIX/lib/libloopai.a                   the static library, debug info stripped
#   PREFIX/include/loopai.h
#   PREFIX/lib/pkgconfig/loopai.pc           `pkg-config --cflags --libs loopai`
# PREFIX may be relative (to where this is run). Then, for programs to find the library at
# run time: `ldconfig` (system prefixes), an rpath, or LD_LIBRARY_PATH (docs/c-api.md).
# LOOPAI_PROFILE=debug installs the debug build instead (scripts/test-bindings.sh).
set -euo pipefail
prefix=${1:?usage: scripts/install-c-lib.sh PREFIX}
case $prefix in /*) ;; *) prefix=$PWD/$prefix ;; esac
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory
profile=${LOOPAI_PROFILE:-release}
case $profile in
  release)
    echo "building libloopai (release; the first build takes several minutes)" >&2
    cargo build --release --locked -p loopai-ffi ;;
  debug) cargo build --locked -p loopai-ffi ;;
  *) echo "LOOPAI_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
built=$target_dir/$profile
version=$(cargo metadata --format-version 1 --no-deps --offline |
  sed -n 's/.*"name":"loopai-ffi","version":"\([^"]*\)".*/\1/p')
[ -n "$version" ] || version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
lib=$prefix/lib
install -d "$lib/pkgconfig" "$prefix/include"
install -m 0755 "$built/libloopai.so" "$lib/libloopai.so.$version"
ln -sfn "libloopai.so.$version" "$lib/libloopai.so.0"
ln -sfn libloopai.so.0 "$lib/libloopai.so"
install -m 0644 "$built/libloopai.a" "$lib/libloopai.a"
if [ "$profile" = release ] && command -v strip >/dev/null; then
  # cargo strips the linked libloopai.so (profile.release.strip) but not the archive.
  strip --strip-debug "$lib/libloopai.a"
fi
install -m 0644 include/loopai.h "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" loopai-ffi/loopai.pc.in \
  >"$lib/pkgconfig/loopai.pc"
echo "installed libloopai $version into $prefix"
