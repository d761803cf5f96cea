#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# Installs, removes and purges a sotad .deb on this machine and checks each step:
# user and groups, files and permissions, the unit enabled but not started, the conffile kept
# on remove and everything gone on purge. Run as root on a machine without sotad installed.
#
#   cross/check-deb.sh target/debian/sotad_0.1.0-1_amd64.deb
set -euo pipefail
deb=${1:?usage: cross/check-deb.sh PACKAGE.deb}
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
ok() { echo "check-deb: ok: $*"; }

dpkg-query -W sotad >/dev/null 2>&1 && fail "sotad is already installed; dpkg --purge sotad first"
echo "== contents"; dpkg -c "$deb"
echo "== dpkg -i"; dpkg -i "$deb"
getent passwd sotad >/dev/null || fail "no sotad user"
id -nG sotad | tr ' ' '\n' | grep -qx audio || fail "sotad is not in the audio group"
ok "system user sotad in groups: $(id -nG sotad)"
[ -x /usr/bin/sotad ] || fail "/usr/bin/sotad missing"
[ "$(stat -c '%U:%G %a' /etc/sotad/sotad.toml)" = "root:sotad 640" ] || fail "/etc/sotad/sotad.toml owner/mode: $(stat -c '%U:%G %a' /etc/sotad/sotad.toml)"
[ "$(stat -c '%U:%G %a' /var/lib/sotad/models)" = "sotad:sotad 750" ] || fail "/var/lib/sotad/models owner/mode"
ok "files: binary, conffile root:sotad 640, /var/lib/sotad/models sotad:sotad 750"
unit=$(dpkg -L sotad | grep -E '/systemd/system/sotad\.service$')
[ -L /etc/systemd/system/multi-user.target.wants/sotad.service ] || fail "unit not enabled"
ok "unit $unit enabled"
if [ -d /run/systemd/system ]; then
  systemctl is-active --quiet sotad && fail "service was started; it must wait for configuration"
  ok "service not started"
fi
systemd-analyze verify "$unit" || fail "systemd-analyze verify rejects $unit"
ok "systemd-analyze verify accepts the unit"
if /usr/bin/sotad --version >/dev/null 2>&1; then
  runuser -u sotad -- /usr/bin/sotad --config /etc/sotad/sotad.toml config check || fail "config check as sotad"
  ok "the sotad user can read and check the installed config"
fi

echo "== dpkg -r"; dpkg -r sotad
[ ! -e /usr/bin/sotad ] || fail "binary left after remove"
[ -f /etc/sotad/sotad.toml ] || fail "conffile must survive remove"
ok "removed; conffile kept"

echo "== dpkg --purge"; dpkg --purge sotad
[ ! -e /etc/sotad ] || fail "/etc/sotad left after purge"
[ ! -e /var/lib/sotad ] || fail "/var/lib/sotad left after purge"
! getent passwd sotad >/dev/null || fail "user left after purge"
[ ! -e /etc/systemd/system/multi-user.target.wants/sotad.service ] || fail "enable symlink left"
ok "purged: no config, state, user or unit symlink left"
