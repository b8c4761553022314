"""Image LUNs in LIO: the ``user:cdp`` backstore and the LUN that export an image.

``expose ... target=<iqn>`` makes the image a LUN the admin's initiators see:

1. the daemon exposes the image (control op ``expose``: it is kept by name,
   and part of the saved cdp configuration);
2. a ``user:cdp`` backstore named after the image, cfgstring
   ``<volume>@<image>`` (the daemon serves that image on it, writable only
   if the image was exposed writable), ``hw_max_sectors=16384`` (TCMU's
   default of 128 sectors refuses transfers over 64 KiB);
3. a LUN for it in ``<iqn>/tpg1``, mapped to every ACL of that TPG (as
   targetcli's ``auto_add_mapped_luns`` does), so the initiators allowed
   there see it.

``unexpose`` removes the LUNs and the backstore before the daemon unexposes
the image.  LIO's own ``saveconfig`` keeps the backstore and the LUN; at
boot the daemon re-exposes the image from the cdp configuration before
``rtslib-fb-targetctl`` restores LIO, so the LUN comes back serving it.

rtslib is imported when used: a ``--cdp-only`` shell (no LIO) can still
expose images for other tools to export, and refuses ``target=`` clearly.
"""

from __future__ import annotations

from .compat import ExecutionError

SUBTYPE_PREFIX = "cdp/"
HW_MAX_SECTORS = 16384


def _rtslib():
    try:
        import rtslib_fb
    except ImportError:
        raise ExecutionError(
            "rtslib-fb is not installed here: expose without target= and export the "
            "image with targetcli (/backstores/user:cdp create cfgstring=<volume>@<image>)"
        ) from None
    return rtslib_fb


def cfgstring(volume: str, image: str) -> str:
    return f"{volume}@{image}"


class LioExport:
    """Creates and deletes image LUNs through rtslib (configfs)."""

    def _root(self):
        rtslib = _rtslib()
        try:
            return rtslib, rtslib.RTSRoot()
        except Exception as exc:  # RTSLibError: no configfs, modules missing
            raise ExecutionError(f"LIO is not available: {exc}") from None

    def backstores_of(self, volume: str, image: str) -> list:
        """The ``user:cdp`` storage objects serving ``volume@image``."""
        rtslib, root = self._root()
        want = SUBTYPE_PREFIX + cfgstring(volume, image)
        return [
            so
            for so in root.storage_objects
            if isinstance(so, rtslib.UserBackedStorageObject) and so.config == want
        ]

    def export(self, volume: str, image: str, size: int, target: str, lun=None) -> str:
        """Backstore + LUN (+ mapped LUNs); returns ``<target>/tpg1/lun<N>``.

        Everything created is deleted again if a later step fails."""
        rtslib, root = self._root()
        try:
            tgt = rtslib.Target(rtslib.FabricModule("iscsi"), target, mode="lookup")
            tpg = rtslib.TPG(tgt, 1, mode="lookup")
        except Exception:
            raise ExecutionError(
                f"no iSCSI target {target} with a tpg1: create it first (/iscsi create {target})"
            ) from None
        if lun is not None:
            try:
                lun = int(lun)
            except ValueError:
                raise ExecutionError(f"lun must be a number, not {lun!r}") from None
            if lun in {x.lun for x in tpg.luns}:
                raise ExecutionError(f"{target}/tpg1 already has a lun{lun}")
        if image in {so.name for so in root.storage_objects}:
            raise ExecutionError(f"a backstore named {image} exists already")
        so = None
        try:
            so = rtslib.UserBackedStorageObject(
                image,
                config=SUBTYPE_PREFIX + cfgstring(volume, image),
                size=size,
                hw_max_sectors=HW_MAX_SECTORS,
            )
            made = rtslib.LUN(tpg, lun=lun, storage_object=so)
            for acl in tpg.node_acls:
                used = {m.mapped_lun for m in acl.mapped_luns}
                free = next(i for i in range(len(used) + 1) if i not in used)
                rtslib.MappedLUN(acl, free, tpg_lun=made)
        except Exception as exc:
            if so is not None:
                try:
                    so.delete()  # also deletes its LUNs
                except Exception:
                    pass
            msg = " ".join(str(exc).split())
            raise ExecutionError(f"could not export image {image} as a LUN: {msg}") from None
        return f"{target}/tpg1/lun{made.lun}"

    def unexport(self, volume: str, image: str) -> list[str]:
        """Delete the backstores (and with them their LUNs) serving the image."""
        gone = []
        for so in self.backstores_of(volume, image):
            luns = [
                f"{lun.parent_tpg.parent_target.wwn}/tpg{lun.parent_tpg.tag}/lun{lun.lun}"
                for lun in so.attached_luns
            ]
            try:
                so.delete()
            except Exception as exc:
                msg = " ".join(str(exc).split())
                raise ExecutionError(f"could not delete backstore {so.name}: {msg}") from None
            gone += luns or [so.name]
        return gone
