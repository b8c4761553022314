"""Build (or reuse) the CDP appliance image: ``make image``.

Usage (``images/build-image.sh`` runs this with the system python3)::

    build-image.sh                 build if needed; print the image folder
    build-image.sh --print-path    print the folder the inputs map to (exit 1 if not built)
    build-image.sh --force         rebuild even if it is cached
    build-image.sh --wheelhouse    build the project's wheelhouse; print its folder
                                   (for ansible/appliance.yml against your own server)

Steps: host tools (apt-get, as root: packer, qemu, mmdebstrap...), the base
(``images/build-base.sh``), the Ansible venv (``ansible/requirements.txt``,
``ansible/requirements.yml``) in ``$CDP_CACHE/ansible-venv``, the wheelhouse
(``tests/vm/handler_wheelhouse.build_wheelhouse`` plus a wheel of
``targetcli-ext``), the accelerator (KVM only if a probe boot of the base's
kernel under KVM gets to its panic in time; else TCG), ``packer build
packer/appliance.pkr.hcl``, then the image folder (see
``images/appliance_image.py``) with its manifest and SHA256SUMS.  Symlinks in
``images/``: ``latest`` (the folder) and ``cdp-appliance-<version>.qcow2``.

Settings (environment): ``CDP_CACHE``, ``CDP_ACCEL`` (``auto``, ``kvm``,
``tcg``), ``CDP_KEEP_IMAGES`` (image folders kept after a build, default 2),
``CDP_KEEP_BASES`` (passed on to build-base.sh).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import appliance_image as ai  # noqa: E402

REPO = ai.REPO
HOST_TOOLS = {  # command -> Debian package
    "packer": "packer",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "ssh": "openssh-client",
    "iscsi-inq": "libiscsi-bin",
    "mkfs.ext4": "e2fsprogs",
}
PROBE_TIMEOUT = 25.0


class BuildError(RuntimeError):
    """The image could not be built (the message says which step)."""


def log(msg: str) -> None:
    print(f"[build-image] {msg}", file=sys.stderr, flush=True)


def run(argv: list, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run([str(a) for a in argv], **kw)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(map(str, argv))} failed (rc={r.returncode})")
    return r


def ensure_host_tools() -> None:
    missing = sorted({pkg for cmd, pkg in HOST_TOOLS.items() if shutil.which(cmd) is None})
    try:
        import ensurepip  # noqa: F401  (python3-venv brings it)
    except ImportError:
        missing.append("python3-venv")
    if not missing:
        return
    if os.geteuid() != 0:
        raise BuildError(f"missing {' '.join(missing)}; install them (apt-get) or run as root")
    log(f"installing host packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
        stdout=subprocess.DEVNULL)  # fmt: skip


def base_folder() -> Path:
    r = run([REPO / "images" / "build-base.sh"], stdout=subprocess.PIPE, text=True)
    return Path(r.stdout.strip().splitlines()[-1])


def ensure_ansible() -> Path:
    """The Ansible venv, (re)installed when the requirements files change."""
    reqs = [REPO / "ansible" / "requirements.txt", REPO / "ansible" / "requirements.yml"]
    want = hashlib.sha256(b"".join(p.read_bytes() for p in reqs)).hexdigest()
    venv = ai.ANSIBLE_VENV
    stamp = venv / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == want:
        return venv
    log(f"installing Ansible into {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", "-r", reqs[0]])
    run([venv / "bin" / "ansible-galaxy", "collection", "install", "-r", reqs[1],
         "-p", venv / "collections"], stdout=subprocess.DEVNULL)  # fmt: skip
    stamp.write_text(want + "\n")
    return venv


def build_wheelhouse(dest: Path, venv: Path) -> list[Path]:
    """The project's wheel and dependencies (handler_wheelhouse) plus targetcli-cdp."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from tests.vm.handler_wheelhouse import build_wheelhouse;"
        "build_wheelhouse(Path(sys.argv[2]))"
    )
    py = venv / "bin" / "python"
    run([py, "-c", code, REPO, dest])
    run([py, "-m", "pip", "--disable-pip-version-check", "-q", "wheel", "--no-deps",
         "-w", dest, REPO / "targetcli-ext"])  # fmt: skip
    return sorted(dest.glob("*.whl"))


def choose_accelerator(base: Path) -> str:
    """``kvm`` only if the base's kernel boots under KVM here; else ``tcg``.

    /dev/kvm can exist and still hang a stock kernel (a paravirtual KVM), so
    the probe boots the kernel with no initramfs and a missing root: a working
    KVM reaches the panic in about a second, and qemu exits (-no-reboot)."""
    choice = os.environ.get("CDP_ACCEL", "auto")
    if choice in ("kvm", "tcg"):
        return choice
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    with tempfile.TemporaryDirectory() as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [ai.vmctl.QEMU, "-accel", "kvm", "-nodefaults", "-display", "none",
                "-no-reboot", "-m", "256", "-kernel", str(base / "vmlinuz"),
                "-append", "console=ttyS0 panic=-1 rdinit=/nonexistent root=/dev/nonexistent",
                "-serial", f"file:{serial}"]  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            proc.wait(PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        text = serial.read_text(errors="replace") if serial.exists() else ""
    ok = "Kernel panic" in text
    log(f"KVM probe: {'works' if ok else 'the kernel does not boot under KVM here'}")
    return "kvm" if ok else "tcg"


def packer_build(base: Path, venv: Path, wheels: Path, out: Path, accel: str, work: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "CHECKPOINT_DISABLE": "1",
        "PACKER_CACHE_DIR": str(work / "packer_cache"),
        "PACKER_LOG": "1",
        "PACKER_LOG_PATH": str(work / "packer.log"),
        "PACKER_NO_COLOR": "1",
    }
    variables = {
        "base_image": base / "root.qcow2",
        "kernel": base / "vmlinuz",
        "initrd": base / "initrd.img",
        "ssh_private_key_file": base / "id_ed25519",
        "output_directory": out,
        "accelerator": accel,
        "ansible_playbook": venv / "bin" / "ansible-playbook",
        "playbook_file": REPO / "ansible" / "appliance.yml",
        "ansible_config": REPO / "ansible" / "ansible.cfg",
        "wheelhouse": wheels,
    }
    argv = ["packer", "build", "-color=false", "-on-error=cleanup"]
    for k, v in variables.items():
        argv += ["-var", f"{k}={v}"]
    argv.append(REPO / "packer" / "appliance.pkr.hcl")
    log(f"packer build (accelerator {accel}; log {work / 'packer.log'})")
    run(argv, env=env, cwd=work)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finish(out: Path, base: Path, key: str, wheels: list[Path], accel: str, t0: float) -> None:
    """Name the image, add kernel, key, manifest and SHA256SUMS."""
    version = ai.project_version()
    name = f"cdp-appliance-{version}.qcow2"
    (out / "cdp-appliance.qcow2").rename(out / name)
    (out / "root.qcow2").symlink_to(name)
    for f in ("vmlinuz", "initrd.img", "id_ed25519"):
        shutil.copy2(base / f, out / f)
    (out / "id_ed25519").chmod(0o600)
    (out / name).chmod(0o444)
    sums = {f: sha256(out / f) for f in (name, "vmlinuz", "initrd.img")}
    (out / "SHA256SUMS").write_text("".join(f"{h}  {f}\n" for f, h in sums.items()))
    base_manifest = json.loads((base / "manifest.json").read_text())
    manifest = {
        "name": "cdp-appliance",
        "version": version,
        "key": key,
        "image": name,
        "sha256": sums,
        "virtual_size": _virtual_size(out / name),
        "kernel": base_manifest.get("kernel"),
        "kernel_cmdline": ai.KERNEL_CMDLINE,
        "boot": "qemu -kernel vmlinuz -initrd initrd.img; root disk first (/dev/vda), "
        "then primary (/dev/vdb), secondary (/dev/vdc), data (/dev/vdd)",
        "base": {
            "key": base_manifest.get("key"),
            "suite": base_manifest.get("suite"),
            "packages": base_manifest.get("packages"),
        },  # fmt: skip
        "wheels": [w.name for w in wheels],
        "packer": _packer_version(),
        "accelerator": accel,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _virtual_size(path: Path) -> int:
    r = run(["qemu-img", "info", "--output=json", "-U", path], stdout=subprocess.PIPE, text=True)
    return json.loads(r.stdout)["virtual-size"]


def _packer_version() -> str:
    r = subprocess.run(["packer", "version"], capture_output=True, text=True)
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 else "?"


def link_into_repo(folder: Path) -> None:
    images = REPO / "images"
    for link in [images / "latest", *images.glob("cdp-appliance-*.qcow2")]:
        if link.is_symlink():
            link.unlink()
    (images / "latest").symlink_to(folder)
    qcow2 = ai.Image(folder).qcow2
    (images / qcow2.name).symlink_to(qcow2)


def prune(keep: Path) -> None:
    n = int(os.environ.get("CDP_KEEP_IMAGES", "2"))
    folders = sorted(ai.CACHE.glob("image-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [f for f in folders if f != keep][max(n - 1, 0) :]:
        log(f"removing old image {old}")
        shutil.rmtree(old, ignore_errors=True)


def build(force: bool) -> Path:
    t0 = time.monotonic()
    ensure_host_tools()
    base = base_folder()
    key = ai.inputs_hash(base.name.removeprefix("base-"))
    folder = ai.image_dir(key)
    if not force and ai.Image(folder).complete():
        log(f"cached, nothing to do ({time.monotonic() - t0:.1f} s)")
        link_into_repo(folder)
        return folder
    ai.CACHE.mkdir(parents=True, exist_ok=True)
    with open(ai.CACHE / ".image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and ai.Image(folder).complete():
            log("built by a concurrent run")
            link_into_repo(folder)
            return folder
        venv = ensure_ansible()
        work = ai.CACHE / f".work-image-{key}.{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            wheels = build_wheelhouse(work / "wheels", venv)
            log(f"wheelhouse: {len(wheels)} wheels")
            accel = choose_accelerator(base)
            out = work / "out"
            packer_build(base, venv, work / "wheels", out, accel, work)
            finish(out, base, key, wheels, accel, t0)
            shutil.copy2(work / "packer.log", out / "packer.log")
            if (work / "out-serial.log").exists():
                shutil.copy2(work / "out-serial.log", out / "serial.log")
            shutil.rmtree(folder, ignore_errors=True)
            out.rename(folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    link_into_repo(folder)
    prune(folder)
    log(f"built in {time.monotonic() - t0:.0f} s: {folder}")
    return folder


def wheelhouse_only() -> Path:
    ensure_host_tools()
    venv = ensure_ansible()
    key = ai.inputs_hash("wheelhouse")
    dest = ai.CACHE / f"wheelhouse-{key}"
    if not any(dest.glob("targetcli_cdp-*.whl")):
        shutil.rmtree(dest, ignore_errors=True)
        build_wheelhouse(dest, venv)
    return dest


def _terminate(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks (work folder cleanup)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    p = argparse.ArgumentParser(prog="build-image.sh", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--print-path", action="store_true", help="print the folder; 1 if not built")
    g.add_argument("--force", action="store_true", help="rebuild even if cached")
    g.add_argument("--wheelhouse", action="store_true", help="only build the wheelhouse")
    args = p.parse_args(argv)
    try:
        if args.print_path:
            r = subprocess.run([REPO / "images" / "build-base.sh", "--print-path"],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
            base = Path(r.stdout.strip().splitlines()[-1])
            folder = ai.image_dir(ai.inputs_hash(base.name.removeprefix("base-")))
            print(folder)
            return 0 if r.returncode == 0 and ai.Image(folder).complete() else 1
        folder = wheelhouse_only() if args.wheelhouse else build(args.force)
    except (BuildError, subprocess.SubprocessError, OSError) as exc:
        log(f"FAILED: {exc}")
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
