#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds a consumer against it, with
# pkg-config and with CMake's find_package, then runs it.
set -eu
build=$1
consumer=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" >/dev/null
for f in include/moert/moert.h include/moert/version.h bin/moert; do
  [ -e "$prefix/$f" ] || { echo "not installed: $f"; exit 1; }
done
pc=$(find "$prefix" -name moert.pc | head -n 1)
[ -n "$pc" ] || { echo "moert.pc not installed"; exit 1; }
libdir=$(dirname "$(dirname "$pc")")
for f in libmoert.so libmoert.a cmake/moert/moertConfig.cmake cmake/moert/moertConfigVersion.cmake; do
  [ -e "$libdir/$f" ] || { echo "not installed: $libdir/$f"; exit 1; }
done

# pkg-config, shared.
export PKG_CONFIG_PATH=$(dirname "$pc")
[ "$(pkg-config --modversion moert)" = "$("$prefix/bin/moert" --version | cut -d' ' -f2)" ] \
  || { echo "pkg-config version differs from the installed CLI's"; exit 1; }
cc -std=c11 -Wall -Werror "$consumer/consumer.c" -o "$tmp/consumer_pc" \
  $(pkg-config --cflags --libs moert) -Wl,-rpath,"$libdir"
"$tmp/consumer_pc"
# pkg-config, static.
cc -std=c11 -Wall -Werror "$consumer/consumer.c" -o "$tmp/consumer_pc_static" \
  $(pkg-config --cflags moert) "$libdir/libmoert.a" $(pkg-config --libs --static moert | sed 's/-lmoert\b//')
"$tmp/consumer_pc_static"

# CMake find_package, shared and static.
cmake -S "$consumer" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/cmake" >/dev/null
"$tmp/cmake/consumer"
"$tmp/cmake/consumer_static"

# The installed CLI finds the installed library.
"$prefix/bin/moert" --version >/dev/null
echo "install checks passed"
