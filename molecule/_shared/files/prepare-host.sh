#!/usr/bin/env bash
# Runs inside one container (molecule/_shared/prepare.yml): turns it into an Atlas A2 host
# from the scenario file already written to /etc/openfuyao-pd-fake-npu.json.
#   prepare-host.sh PREFIX_LEN [DEAD_CHIP ...]
# - hccn_tool (the fake with a real ping) and npu-smi where the Ascend driver installs them;
# - each chip's device IP, as the fake reports it, put on eth0 (except the dead chips, whose
#   configured IP then answers nobody) so the ping mesh crosses the Docker network;
# - /etc/hccn.conf written from the same IPs.
# One script instead of many small tasks: a container round trip costs about a second on
# a loaded 2-core machine. Idempotent.
set -euo pipefail
prefix="$1"
shift
dead=" $* "
mkdir -p /usr/local/Ascend/driver/tools /usr/local/sbin
ln -sfn /opt/openfuyao-pd-mol/hccn_tool_live /usr/local/Ascend/driver/tools/hccn_tool
ln -sfn /opt/openfuyao-pd-fakes/npu-smi /usr/local/sbin/npu-smi
hccn=/usr/local/Ascend/driver/tools/hccn_tool
chips="$(npu-smi info -m | awk 'NR > 1 && $3 ~ /^[0-9]+$/ {print $3}')"
present="$(ip -o -4 addr show dev eth0)"
conf=""
changed=0
for chip in $chips; do
  out="$("$hccn" -i "$chip" -ip -g 2>/dev/null)" || continue
  ip="$(sed -n 's/^ipaddr://p' <<<"$out")"
  mask="$(sed -n 's/^netmask://p' <<<"$out")"
  conf+="address_${chip}=${ip}"$'\n'"netmask_${chip}=${mask}"$'\n'
  [[ "$dead" == *" $chip "* ]] && continue
  if ! grep -q " ${ip}/" <<<"$present"; then
    ip addr add "${ip}/${prefix}" dev eth0
    changed=1
  fi
done
if [[ "$(cat /etc/hccn.conf 2>/dev/null)"$'\n' != "$conf" ]]; then
  printf '%s' "$conf" >/etc/hccn.conf
  changed=1
fi
echo "changed=$changed"
