"""The ``user:cdp`` TCMU handler daemon (``cdp-handlerd``).

Modules, one idea each: :mod:`.netlink` (control plane, TCM-USER generic
netlink), :mod:`.manager` (attach/detach/recover devices), :mod:`.device` (one
device's ring thread and workers), :mod:`.backend` (a protected volume as the
SCSI layer's block backend), :mod:`.volumes` (the volume state folder),
:mod:`.cfgstring` (the backstore's config string), :mod:`.kernel` (sysfs and
configfs knobs), :mod:`.dbus_service` (``org.kernel.TCMUService1`` for
targetcli), :mod:`.config` (the TOML file) and :mod:`.main` (the process).
See docs/HANDLER.md.
"""


def handlerd(argv: list[str] | None = None) -> int:
    """The ``cdp-handlerd`` entry point: set glibc's allocator
    (:mod:`appliance.malloctune`), choose the CRC32C implementation
    (:mod:`appliance.crcprobe`) before anything imports it, then run
    :func:`appliance.daemon.main.main`."""
    import sys

    from appliance import crcprobe, malloctune

    if not {"-h", "--help"} & set(sys.argv[1:] if argv is None else argv):
        malloctune.configure()
        crcprobe.configure()
    from .main import main

    return main(argv)
