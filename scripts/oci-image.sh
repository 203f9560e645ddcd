#!/usr/bin/env bash
# Builds an OCI image archive from one binary without a Docker daemon or a base image
# (neither is reachable here): the same runtime layout as the Dockerfiles' distroless stage.
#
#   oci-image.sh --binary PATH --ref REF --out FILE [--name NAME] [--user UID]
#                [--port PORT]... [--crane PATH]
#
# The one layer holds /usr/local/bin/NAME (debug info stripped), the shared libraries it links (glibc, libgcc_s,
# as `ldd` resolves them on this machine, so build and image agree), the CA bundle,
# /etc/passwd and /etc/group with `nonroot` (65532), /home/nonroot and /tmp. No shell.
# Files are owned by root, timestamps are zero, so the same inputs give the same digest.
# crane (go-containerregistry) appends the layer to an empty base and sets the config
# (entrypoint, user, ports); `crane mutate` reads only from a registry, so a throwaway
# `crane registry serve` on 127.0.0.1 holds the intermediate image. The archive carries
# REF (e.g. parapet/dataplane:0.1.0) for `ctr images import` and `docker load`.
set -euo pipefail
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

binary="" ref="" out="" name="" user=65532 crane="${CRANE:-}" ports=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --port) ports+=("$2"); shift 2 ;;
    --crane) crane="$2"; shift 2 ;;
    *) die "unknown option $1 (see the comment at the top of $0)" ;;
  esac
done
[ -x "$binary" ] || die "--binary must name an executable file; got '${binary}'"
[ -n "$ref" ] || die "--ref is required (the image reference the archive carries, e.g. parapet/dataplane:0.1.0)"
[ -n "$out" ] || die "--out is required (where to write the image archive)"
[[ "$user" =~ ^[0-9]+$ ]] || die "--user takes a numeric uid, not '$user'"
name="${name:-$(basename "$binary")}"
if [ -z "$crane" ]; then
  crane="$("$(dirname "$0")/../e2e/scripts/build-node.sh" crane-path)" || die "crane is needed and building it failed"
fi
[ -x "$crane" ] || die "crane is not executable: $crane"

work="$(mktemp -d)"
reg_pid=""
cleanup() {
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; wait "$reg_pid" 2>/dev/null || true; fi
  rm -rf -- "$work"
}
trap cleanup EXIT
root="$work/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
install -m 0755 "$binary" "$root/usr/local/bin/$name"
# Release builds keep line tables for profiling; the image needs only the symbols that
# backtraces name functions with.
strip --strip-debug "$root/usr/local/bin/$name"

# Shared libraries at the paths the binary's loader looks in. A static binary has none.
if ldd "$binary" >/dev/null 2>&1; then
  while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(ldd "$binary" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}' | sort -u)
fi
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
chmod 1777 "$root/tmp"
chmod 0700 "$root/home/nonroot"

# Owner of /home/nonroot is the image user; everything else root.
tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 \
  --exclude=./home/nonroot -C "$root" -cf "$work/layer.tar" .
tar --mtime=@0 --numeric-owner --owner="$user" --group="$user" --no-recursion \
  -C "$root" -rf "$work/layer.tar" ./home/nonroot

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$reg_pid" 2>/dev/null || { cat "$work/registry.log" >&2; die "crane registry serve exited"; }
  sleep 0.1
done
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch="$(uname -m)" ;;
esac
tmp_ref="127.0.0.1:$port/build/$name:latest"
# crane logs every blob it pushes; kept for a failure only.
"$crane" append --oci-empty-base --platform "linux/$arch" -f "$work/layer.tar" -t "$tmp_ref" >"$work/crane.log" 2>&1 \
  || { cat "$work/crane.log" >&2; die "crane append failed"; }
mutate=(--set-platform "linux/$arch" --entrypoint "/usr/local/bin/$name" --user "$user:$user" --workdir /
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
for p in "${ports[@]}"; do mutate+=(--exposed-ports "$p/tcp"); done
mkdir -p "$(dirname "$out")"
"$crane" mutate "$tmp_ref" "${mutate[@]}" -t "$ref" -o "$out.tmp" >>"$work/crane.log" 2>&1 \
  || { cat "$work/crane.log" >&2; die "crane mutate failed"; }
mv "$out.tmp" "$out"
printf '%s\t%s\t%s MB uncompressed, %s MB archive\n' "$ref" "$out" \
  "$(awk -v b="$(stat -c %s "$work/layer.tar")" 'BEGIN {printf "%.1f", b / 1e6}')" \
  "$(awk -v b="$(stat -c %s "$out")" 'BEGIN {printf "%.1f", b / 1e6}')"
