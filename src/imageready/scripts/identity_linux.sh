#!/bin/sh
# imageready guest identity probe (read-only): which VM is this? One JSON object on stdout:
# {"imds": {"vmId", "name", "resourceId"} or null, "imds_error", "smbios_uuid", "smbios_error"}.
# IMDS (http://169.254.169.254, header Metadata: true, never through a proxy) answers only the VM
# it runs on; the SMBIOS system UUID is Azure's vmId too (byte order: see docs/guests.md).
# /sys/class/dmi/id/product_uuid is readable by root only: sudo -n where the user may.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
PYTHONDONTWRITEBYTECODE=1
export PATH LC_ALL PYTHONDONTWRITEBYTECODE
compute='http://169.254.169.254/metadata/instance/compute'
version='api-version=2021-02-01'
uuid_file=/sys/class/dmi/id/product_uuid
if [ "$(id -u)" = 0 ]; then
    smbios=$(cat "$uuid_file" 2>&1); smbios_rc=$?
else
    smbios=$(cat "$uuid_file" 2>/dev/null || sudo -n cat "$uuid_file" 2>&1); smbios_rc=$?
fi
if command -v python3 >/dev/null 2>&1; then
IR_URL="$compute?$version" IR_SMBIOS=$smbios IR_SMBIOS_RC=$smbios_rc python3 - <<'IMAGEREADY_IDENTITY_PY'
import json
import os
import urllib.request

found = {"imds": None, "imds_error": None, "smbios_uuid": None, "smbios_error": None}
try:
    # an empty ProxyHandler: IMDS must never be asked through a proxy (Microsoft's IMDS page)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(os.environ["IR_URL"], headers={"Metadata": "true"})
    with opener.open(request, timeout=5) as response:
        compute = json.load(response)
    found["imds"] = {key: compute.get(key) for key in ("vmId", "name", "resourceId")}
except Exception as err:  # unreachable, refused, not JSON: say why, in one line
    found["imds_error"] = " ".join(f"{type(err).__name__}: {err}".split())[:200]
smbios = os.environ.get("IR_SMBIOS", "").strip()
if os.environ.get("IR_SMBIOS_RC") == "0" and smbios:
    found["smbios_uuid"] = smbios[:64]
else:
    found["smbios_error"] = " ".join((smbios or "not readable").split())[:200]
print(json.dumps(found))
IMAGEREADY_IDENTITY_PY
exit 0
fi
# no python3: the vmId alone as text (curl or wget), and the SMBIOS UUID
vmid=$(curl -s -f --noproxy '*' -m 5 -H Metadata:true "$compute/vmId?$version&format=text" 2>/dev/null ||
    wget -q -O - --no-proxy -T 5 --header=Metadata:true "$compute/vmId?$version&format=text" 2>/dev/null)
clean() { printf '%s' "$1" | tr -cd '0-9A-Fa-f-' | cut -c1-64; }
vmid=$(clean "$vmid")
if [ -n "$vmid" ]; then
    imds="{\"vmId\": \"$vmid\", \"name\": null, \"resourceId\": null}" imds_error=null
else
    imds=null imds_error='"IMDS did not answer (no python3; curl and wget failed)"'
fi
if [ "$smbios_rc" = 0 ] && [ -n "$(clean "$smbios")" ]; then
    smbios_json="\"$(clean "$smbios")\"" smbios_error=null
else
    smbios_json=null smbios_error='"not readable"'
fi
printf '{"imds": %s, "imds_error": %s, "smbios_uuid": %s, "smbios_error": %s}\n' \
    "$imds" "$imds_error" "$smbios_json" "$smbios_error"
