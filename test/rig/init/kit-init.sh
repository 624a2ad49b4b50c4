#!/bin/busybox sh
# /init of the L2 guest kit: the nested guest Porthole boots inside the rig. Loads the
# modules named by kit.modules=a,b (with their dependencies) and keeps a root shell on
# the console for the test's prompt-and-command helper.
/bin/busybox --install -s /bin
# Debian tools in /usr/bin (lsusb, aplay, the lspci script) come before busybox applets.
export PATH=/usr/bin:/bin
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
hostname kit

arg() {
  for a in $(cat /proc/cmdline); do
    case "$a" in "$1="*) echo "${a#*=}"; return;; esac
  done
}

# /lib/modules/deps has one line per module: "name: dep1 dep2 ... name", in load order.
load_module() {
  line=$(grep "^$1:" /lib/modules/deps) || { echo "KIT-WARN: the kit has no module $1"; return; }
  for d in ${line#*:}; do
    [ -d "/sys/module/$d" ] || insmod "/lib/modules/$d.ko" || echo "KIT-WARN: insmod $d failed"
  done
}
for m in $(arg kit.modules | tr ',' ' '); do load_module "$(echo "$m" | tr '-' '_')"; done

export HOME=/root PS1='kit# '
echo "KIT-READY: $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus, uptime $(cut -d' ' -f1 /proc/uptime) s"
while :; do
  setsid cttyhack sh
  echo "KIT: shell exited, starting another"
done
