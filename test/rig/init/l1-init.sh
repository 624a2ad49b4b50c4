#!/rig/bin/busybox sh
# /init of the rig's L1 workstation. Loads the modules, mounts the host's /usr and the
# project over 9p (read-only), runs the scenario named by rig.scenario= and powers off.
# The runner reads the RIG-* lines; a scenario prints its own RIG-RESULT line.
export PATH=/rig/bin:/usr/local/bin:/usr/bin:/usr/sbin
/rig/bin/busybox --install -s /rig/bin
mkdir -p /proc /sys /dev /tmp /run /project /usr /etc /root /opt/node
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
echo "RIG-STAGE: /init started, uptime $(cut -d' ' -f1 /proc/uptime) s"

arg() {
  for a in $(cat /proc/cmdline); do
    case "$a" in "$1="*) echo "${a#*=}"; return;; esac
  done
}

while read -r m; do
  insmod "/rig/modules/$m.ko" 2>/tmp/insmod.err || echo "RIG-WARN: insmod $m: $(cat /tmp/insmod.err)"
done < /rig/modules/load.list

tags=" $(for t in /sys/bus/virtio/devices/*/mount_tag; do [ -f "$t" ] && tr -d '\000' < "$t"; echo; done | tr '\n' ' ') "
has_tag() { case "$tags" in *" $1 "*) return 0;; esac; return 1; }
mount9p() {
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose "$1" "$2" || echo "RIG-WARN: cannot mount 9p tag $1 on $2"
}
mount9p hostusr /usr
if has_tag hostlib; then
  # The host does not merge /usr: its /lib and /lib64 come separately.
  mkdir -p /lib /lib64
  mount9p hostlib /lib
  has_tag hostlib64 && mount9p hostlib64 /lib64
  ln -s /rig/bin /bin
else
  ln -s usr/lib /lib
  ln -s usr/lib64 /lib64
  ln -s usr/bin /bin
  ln -s usr/sbin /sbin
fi
has_tag hostnode && mount9p hostnode /opt/node
mount9p project /project
# The run's folder on the rig host, writable: files a scenario leaves there land on the host.
mkdir -p /rig-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 rigout /rig-out || echo "RIG-WARN: cannot mount 9p tag rigout on /rig-out"
# npm run rig -- exec FILE.js: the script's own folder, read-only.
if has_tag rigexec; then
  mkdir -p /rig-exec
  mount9p rigexec /rig-exec
fi

# nobody: tests check what an unprivileged user without /dev/kvm access gets.
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > /etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > /etc/group
printf '127.0.0.1 localhost\n::1 localhost\n' > /etc/hosts
# The host's /etc for what host programs look up there (/etc/alternatives links, fonts,
# chromium.d); L1's own files above stay L1's.
if has_tag hostetc; then
  mkdir -p /host-etc
  mount9p hostetc /host-etc
  for e in /host-etc/*; do [ -e "/etc/${e##*/}" ] || ln -s "$e" "/etc/${e##*/}"; done
fi
hostname rig
ip link set lo up
# The rig's own network (rigNet), found by its MAC: the rig host's loopback is 10.0.2.2.
for n in /sys/class/net/*; do
  if [ "$(cat "$n/address" 2>/dev/null)" = 52:54:00:72:69:67 ]; then
    ip addr add 10.0.2.15/24 dev "${n##*/}"
    ip link set "${n##*/}" up
    ip route add default via 10.0.2.2
  fi
done

scenario=$(arg rig.scenario)
node=$(arg rig.node)
[ -n "$node" ] || node=/usr/bin/node
export HOME=/root TERM=dumb RIG_SCENARIO="$scenario" RIG_KIT_DIR="$(arg rig.kit)" RIG_NODE="$node"
# require('porthole-rig') from any script in L1 (npm run rig -- exec).
export NODE_PATH=/project/dist/test/rig/node-path
exec_script=$(arg rig.exec)
[ -n "$exec_script" ] && export RIG_EXEC_SCRIPT="/rig-exec/$exec_script"
# rig.env=NAME=VALUE (repeatable, from the runner's --env) reaches the scenario as RIG_NAME.
for a in $(cat /proc/cmdline); do
  case "$a" in rig.env=*=*) kv=${a#rig.env=}; export "RIG_${kv%%=*}=${kv#*=}";; esac
done
echo "RIG-STAGE: modules loaded and shares mounted, uptime $(cut -d' ' -f1 /proc/uptime) s"
cd /project
if [ "$scenario" != shell ]; then
  # The runner takes 30 s of silence for a stalled L1; this keeps a quiet scenario audible.
  ( while sleep 5; do echo "RIG-HEARTBEAT $(cut -d' ' -f1 /proc/uptime)"; done ) &
fi
if [ "$scenario" = shell ]; then
  echo "RIG-SCENARIO-START: shell"
  setsid cttyhack sh
  echo "RIG-RESULT: PASS shell exited"
else
  echo "RIG-SCENARIO-START: $scenario"
  "$node" "/project/dist/test/rig/scenarios/$scenario.js"
  status=$?
  [ -f /run/rig-result ] || echo "RIG-RESULT: FAIL scenario $scenario exited with status $status without giving a result"
fi
sync
poweroff -f
