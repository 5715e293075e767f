# imageready live suite: what an operator sets on a Linux copy before imageready checks it (run
# as root through Azure Run Command). Idempotent.
set -e
conf=/etc/waagent.conf
# deprovisioning must remove the SSH host keys and root's password (checks IR-LNX-002)
for setting in Provisioning.RegenerateSshHostKeyPair=y Provisioning.DeleteRootPassword=y; do
  key=${setting%%=*}
  if grep -q "^$key=" "$conf"; then
    sed -i "s/^$key=.*/$setting/" "$conf"
  else
    echo "$setting" >> "$conf"
  fi
done
# keepalives within Azure's load balancer idle timeout (check IR-LNX-006)
if ! grep -qi '^[[:space:]]*ClientAliveInterval' /etc/ssh/sshd_config; then
  echo 'ClientAliveInterval 120' >> /etc/ssh/sshd_config
fi
# an image taken while cloud-init still runs carries a half-applied configuration (IR-LNX-004)
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init status --wait >/dev/null 2>&1 || true
fi
echo "imageready-live: prepared"
