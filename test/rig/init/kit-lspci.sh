#!/bin/sh
# "lspci -nn" for the kit: busybox has no lspci, so this prints the kernel's own PCI view
# from sysfs in lspci's -nn layout (class and IDs; no name database).
for d in /sys/bus/pci/devices/*; do
  [ -e "$d/class" ] || continue
  slot=${d##*/}
  slot=${slot#0000:}
  class=$(cat "$d/class")
  cc=$(echo "$class" | cut -c3-6)
  case "$cc" in
    0000) name="Non-VGA unclassified device";;
    0100) name="SCSI storage controller";;
    0101) name="IDE interface";;
    0106) name="SATA controller";;
    0108) name="Non-Volatile memory controller";;
    0180) name="Mass storage controller";;
    0200) name="Ethernet controller";;
    0280) name="Network controller";;
    0300) name="VGA compatible controller";;
    0600) name="Host bridge";;
    0601) name="ISA bridge";;
    0604) name="PCI bridge";;
    0680) name="Bridge";;
    0700) name="Serial controller";;
    0780) name="Communication controller";;
    0880) name="System peripheral";;
    0c03) name="USB controller";;
    0c05) name="SMBus";;
    00ff) name="Unassigned class";;
    *) name="Class";;
  esac
  vendor=$(cut -c3-6 "$d/vendor")
  device=$(cut -c3-6 "$d/device")
  rev=$(cut -c3-4 "$d/revision" 2>/dev/null)
  if [ -n "$rev" ] && [ "$rev" != 00 ]; then
    echo "$slot $name [$cc]: Device [$vendor:$device] (rev $rev)"
  else
    echo "$slot $name [$cc]: Device [$vendor:$device]"
  fi
done
