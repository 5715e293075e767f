"""The documents the checks enforce (one place, so a moved page is one edit)."""

GENERALIZE = "https://learn.microsoft.com/azure/virtual-machines/generalize"
SYSPREP_ROLES = (
    "https://learn.microsoft.com/windows-hardware/manufacture/desktop/sysprep-support-for-server-roles"
)
SYSPREP_OVERVIEW = (
    "https://learn.microsoft.com/windows-hardware/manufacture/desktop/sysprep--system-preparation--overview"
)
SYSPREP_APPX = (
    "https://learn.microsoft.com/troubleshoot/windows-client/setup-upgrade-and-drivers/"
    "sysprep-fails-remove-or-update-store-apps"
)
SYSPREP_DOMAIN = "https://learn.microsoft.com/windows-hardware/manufacture/desktop/sysprep--generalize--a-windows-installation"
WINDOWS_PREPARE = "https://learn.microsoft.com/azure/virtual-machines/windows/prepare-for-upload-vhd-image"
WINDOWS_AGENT = "https://learn.microsoft.com/azure/virtual-machines/extensions/agent-windows"
ADE = "https://learn.microsoft.com/azure/virtual-machines/disk-encryption-overview"
SSE = "https://learn.microsoft.com/azure/virtual-machines/disk-encryption"
LINUX_GENERIC = "https://learn.microsoft.com/azure/virtual-machines/linux/create-upload-generic"
LINUX_AGENT = "https://learn.microsoft.com/azure/virtual-machines/extensions/agent-linux"
MARKETPLACE_CERT = "https://learn.microsoft.com/partner-center/marketplace-offers/azure-vm-certification-faq"
MANAGED_IMAGE = "https://learn.microsoft.com/azure/virtual-machines/capture-image-resource"
IMAGE_VERSION = "https://learn.microsoft.com/azure/virtual-machines/image-version"
GALLERY_DEFINITIONS = (
    "https://learn.microsoft.com/azure/virtual-machines/shared-image-galleries#image-definitions"
)
