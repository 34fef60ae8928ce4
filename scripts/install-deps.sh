#!/usr/bin/env bash
# Installs the Debian packages moert needs, and only those that are missing.
# As root it runs apt-get; otherwise it prints the exact command to run and fails.
set -eu

packages=(
  build-essential   # the C compiler toolchain (gcc with OpenMP, make)
  cmake
  pkg-config
  libopenmpi-dev
  openmpi-bin
  libnuma-dev
  check             # unit tests
  libdnnl-dev       # oneDNN: the GEMM of the gate and the experts
  libcjson-dev      # JSON output and file headers
  gnuplot-nox       # `moert simulate`'s plots
)
# For the set-up's own test: extra package names to require (one that does not exist
# shows the not-root message without touching the machine).
if [ -n "${MOERT_DEPS_EXTRA:-}" ]; then
  read -r -a extra <<<"$MOERT_DEPS_EXTRA"
  packages+=("${extra[@]}")
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "moert: not a Debian system; make sure these are installed: ${packages[*]}" >&2
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "moert: missing Debian packages: ${missing[*]}" >&2
  echo "moert: run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "moert: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
