"""azsim's Linux guests: a cached Debian root file system, booted per VM in a sandbox.

``rootfs`` builds and caches the Debian tree, ``spec`` validates a scenario's ``guest:`` mapping,
``provision`` turns it into the first-boot script, ``sandbox`` runs the namespaces and sshd.
``azsim.linuxguest.LinuxGuest`` puts them together behind ARM's guest seam.
"""
