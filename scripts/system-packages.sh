#!/usr/bin/env bash
# Install the Debian packages of system-packages.txt whose command is missing (apt-get, as root).
# Without root or apt-get it says what is missing and how to install it, and fails only if something is.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
required=()
while read -r command package optional; do
  [[ -z "${command}" || "${command}" == \#* ]] && continue
  command -v "${command}" >/dev/null 2>&1 && continue
  need+=("${package}")
  [ "${optional:-}" = "optional" ] || required+=("${package}")
done < system-packages.txt
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ferry setup: missing system packages: ${need[*]} (install them: sudo apt-get install ${need[*]})" >&2
  [ ${#required[@]} -eq 0 ] && exit 0
  exit 1
fi
echo "ferry setup: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
