# The CDP appliance image, for Debian's Packer 1.6.6 (no plugins, no `packer init`).
#
# Run by images/build-image.sh (`make image`), which fills in every variable:
# the qemu builder boots a copy of the cached mmdebstrap base
# (images/build-base.sh: ext4 on the whole disk, booted with -kernel/-initrd),
# Packer waits for SSH with the base's root key, and the ansible provisioner
# runs ansible/appliance.yml against it.  The guest has no network: qemu's user
# network is restricted and the only forward (SSH) is bound to 127.0.0.1.

variable "base_image" {
  type        = string
  description = "root.qcow2 of the base (read, never written)"
}

variable "kernel" {
  type = string
}

variable "initrd" {
  type = string
}

variable "ssh_private_key_file" {
  type        = string
  description = "the base's root key (id_ed25519)"
}

variable "output_directory" {
  type = string
}

variable "vm_name" {
  type    = string
  default = "cdp-appliance.qcow2"
}

variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "kvm where /dev/kvm works with this kernel, else tcg (images/build-image.sh decides)"
}

variable "disk_size" {
  type        = string
  default     = "4096M"
  description = "the base's virtual size: the file system fills the whole disk, so no resize"
}

variable "ansible_playbook" {
  type        = string
  description = "ansible-playbook of the build's venv"
}

variable "playbook_file" {
  type = string
}

variable "ansible_config" {
  type = string
}

variable "wheelhouse" {
  type        = string
  description = "folder with the project's wheels and their dependencies"
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 2048
}

source "qemu" "appliance" {
  iso_url          = var.base_image
  iso_checksum     = "none"
  disk_image       = true
  use_backing_file = false
  skip_resize_disk = true
  disk_size        = var.disk_size
  format           = "qcow2"
  disk_interface   = "virtio"
  disk_cache       = "unsafe"
  disk_discard     = "unmap"
  disk_compression = false
  net_device       = "virtio-net-pci"
  accelerator      = var.accelerator
  headless         = true
  cpus             = var.cpus
  memory           = var.memory
  output_directory = var.output_directory
  vm_name          = var.vm_name

  communicator           = "ssh"
  ssh_username           = "root"
  ssh_private_key_file   = var.ssh_private_key_file
  ssh_timeout            = "20m"
  ssh_handshake_attempts = 200
  host_port_min          = 20000
  host_port_max          = 29999
  # Nothing to type at a boot prompt (no boot_command): no VNC (and -vnc none below).
  disable_vnc = true
  # Everything that makes the image a fresh appliance happens last: no host
  # keys (made on first boot), an empty machine-id, no Ansible leftovers.
  shutdown_command = "rm -rf /root/.ansible /root/.cache /opt/cdp/wheels/*.tmp; rm -f /etc/ssh/ssh_host_*; : > /etc/machine-id; rm -f /var/lib/dbus/machine-id; journalctl --rotate --vacuum-time=1s >/dev/null 2>&1; sync; systemctl poweroff"
  shutdown_timeout = "5m"

  # The base has no boot loader: boot its kernel directly, root = the whole disk.
  # -netdev replaces Packer's default (which listens on every address): restrict=on,
  # forward bound to 127.0.0.1.  Packer fills in {{ .SSHHostPort }}.
  qemuargs = [
    ["-kernel", var.kernel],
    ["-initrd", var.initrd],
    ["-append", "console=ttyS0,115200 root=/dev/vda rw net.ifnames=0 panic=-1"],
    ["-cpu", "Nehalem"],
    ["-netdev", "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-device", "virtio-net-pci,netdev=user.0"],
    ["-device", "virtio-rng-pci"],
    ["-vnc", "none"],
    ["-serial", "file:${var.output_directory}-serial.log"],
  ]
}

build {
  sources = ["source.qemu.appliance"]

  provisioner "ansible" {
    command       = var.ansible_playbook
    playbook_file = var.playbook_file
    user          = "root"
    # Packer 1.6.6's SSH proxy offers only ssh-rsa, which bookworm's OpenSSH 9.2
    # refuses: let Ansible connect to the forwarded port itself.
    use_proxy = false
    extra_arguments = [
      "-e", "appliance_build=true",
      "-e", "cdp_wheelhouse=${var.wheelhouse}",
    ]
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${var.ansible_config}",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_NOCOLOR=1",
    ]
  }
}
