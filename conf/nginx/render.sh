#!/bin/sh
# Writes each *.conf beside this script to $OUT with ${NODE_IP} replaced by the node's address
# on the pod network. Unless NODE_IP is set, that is the pod's default gateway, which with
# flannel is the node's cni0 bridge, where plura-relay listens (read from the routing table,
# where it is little-endian hex: 0102F40A is 10.244.2.1).
set -eu
if [ -z "${NODE_IP:-}" ]; then
  gw=$(awk '$2 == "00000000" { print $3; exit }' "${ROUTES:-/proc/net/route}")
  [ -n "$gw" ] || { echo "render: no default route; set NODE_IP" >&2; exit 1; }
  NODE_IP=$(printf '%d.%d.%d.%d' $(echo "$gw" | sed 's/\(..\)\(..\)\(..\)\(..\)/0x\4 0x\3 0x\2 0x\1/'))
fi
for f in "$(dirname "$0")"/*.conf; do
  sed "s/\${NODE_IP}/$NODE_IP/g" "$f" > "$OUT/${f##*/}"
  echo "render: ${f##*/}: syslog to $NODE_IP"
done
