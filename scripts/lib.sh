# Shared shell helpers for the scripts in this folder. Source it; do not run it.
# Everything the scripts start lives under .run/ (state, logs) and .tools/ (installs) in the checkout.

KMJ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KMJ_RUN="${KMJ_RUN:-$KMJ_ROOT/.run}"
KMJ_TOOLS="${KMJ_TOOLS:-$KMJ_ROOT/.tools}"
mkdir -p "$KMJ_RUN" "$KMJ_TOOLS"

say() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
  return 1
}

# wait_port HOST PORT SECONDS WHAT: poll until the port answers, or fail naming WHAT.
wait_port() {
  local host=$1 port=$2 seconds=$3 what=$4 i
  for ((i = 0; i < seconds * 5; i++)); do
    port_open "$host" "$port" && return 0
    sleep 0.2
  done
  die "$what did not open $host:$port within ${seconds}s"
}

# as_root CMD...: run as root, through sudo when the caller is not root.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

# apt_install PKG...: install Debian packages that are missing.
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} from Debian"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
