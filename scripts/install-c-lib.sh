#!/usr/bin/env bash
# Builds libloopai (release) and installs it with its header and pkg-config file:
#   scripts/install-c-lib.sh /usr/local
# gives PREFIX/lib/libloopai.{so,a}, PREFIX/include/loopai.h, PREFIX/lib/pkgconfig/loopai.pc.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: scripts/install-c-lib.sh PREFIX}
profile=${LOOPAI_PROFILE:-release}  # "debug" for the tests in scripts/test-bindings.sh
if [ "$profile" = release ]; then
  cargo build --release --locked -p loopai-ffi
else
  cargo build --locked -p loopai-ffi
fi
target=${CARGO_TARGET_DIR:-target}/$profile
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libloopai.so" "$prefix/lib/"
install -m 0644 "$target/libloopai.a" "$prefix/lib/"
install -m 0644 include/loopai.h "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" loopai-ffi/loopai.pc.in \
  >"$prefix/lib/pkgconfig/loopai.pc"
echo "installed libloopai $version into $prefix"
