"""What Windows Server knows about itself: feature names, OS versions, well-known locations.

The feature rows are ``Get-WindowsFeature`` output (Name, DisplayName, FeatureType, parent) for
the roles and features scenarios use; a name missing here is a scenario typo, not a new feature.
"""

from __future__ import annotations

from typing import NamedTuple


class Feature(NamedTuple):
    name: str
    display_name: str
    feature_type: str  # "Role" | "Role Service" | "Feature"
    parent: str = ""


FEATURES: dict[str, Feature] = {
    f.name.lower(): f
    for f in (
        Feature("AD-Certificate", "Active Directory Certificate Services", "Role"),
        Feature("ADCS-Cert-Authority", "Certification Authority", "Role Service", "AD-Certificate"),
        Feature("AD-Domain-Services", "Active Directory Domain Services", "Role"),
        Feature("ADFS-Federation", "Active Directory Federation Services", "Role"),
        Feature("ADLDS", "Active Directory Lightweight Directory Services", "Role"),
        Feature("ADRMS", "Active Directory Rights Management Services", "Role"),
        Feature("DHCP", "DHCP Server", "Role"),
        Feature("DNS", "DNS Server", "Role"),
        Feature("Fax", "Fax Server", "Role"),
        Feature("FileAndStorage-Services", "File and Storage Services", "Role"),
        Feature("File-Services", "File and iSCSI Services", "Role Service", "FileAndStorage-Services"),
        Feature("FS-FileServer", "File Server", "Role Service", "File-Services"),
        Feature("FS-DFS-Namespace", "DFS Namespaces", "Role Service", "File-Services"),
        Feature("FS-DFS-Replication", "DFS Replication", "Role Service", "File-Services"),
        Feature("Storage-Services", "Storage Services", "Role Service", "FileAndStorage-Services"),
        Feature("HostGuardianServiceRole", "Host Guardian Service", "Role"),
        Feature("Hyper-V", "Hyper-V", "Role"),
        Feature("NPAS", "Network Policy and Access Services", "Role"),
        Feature("Print-Services", "Print and Document Services", "Role"),
        Feature("RemoteAccess", "Remote Access", "Role"),
        Feature("DirectAccess-VPN", "DirectAccess and VPN (RAS)", "Role Service", "RemoteAccess"),
        Feature("Routing", "Routing", "Role Service", "RemoteAccess"),
        Feature("Remote-Desktop-Services", "Remote Desktop Services", "Role"),
        Feature(
            "RDS-Connection-Broker",
            "Remote Desktop Connection Broker",
            "Role Service",
            "Remote-Desktop-Services",
        ),
        Feature("RDS-Gateway", "Remote Desktop Gateway", "Role Service", "Remote-Desktop-Services"),
        Feature("RDS-Licensing", "Remote Desktop Licensing", "Role Service", "Remote-Desktop-Services"),
        Feature(
            "RDS-RD-Server",
            "Remote Desktop Session Host",
            "Role Service",
            "Remote-Desktop-Services",
        ),
        Feature("RDS-Web-Access", "Remote Desktop Web Access", "Role Service", "Remote-Desktop-Services"),
        Feature("UpdateServices", "Windows Server Update Services", "Role"),
        Feature("VolumeActivation", "Volume Activation Services", "Role"),
        Feature("WDS", "Windows Deployment Services", "Role"),
        Feature("WDS-Deployment", "Deployment Server", "Role Service", "WDS"),
        Feature("Web-Server", "Web Server (IIS)", "Role"),
        Feature("Web-WebServer", "Web Server", "Role Service", "Web-Server"),
        Feature("Web-Mgmt-Tools", "Management Tools", "Role Service", "Web-Server"),
        Feature("BitLocker", "BitLocker Drive Encryption", "Feature"),
        Feature("Containers", "Containers", "Feature"),
        Feature("Failover-Clustering", "Failover Clustering", "Feature"),
        Feature("Multipath-IO", "Multipath I/O", "Feature"),
        Feature("NET-Framework-45-Features", ".NET Framework 4.8 Features", "Feature"),
        Feature("NET-Framework-45-Core", ".NET Framework 4.8", "Feature", "NET-Framework-45-Features"),
        Feature("NET-WCF-Services45", "WCF Services", "Feature", "NET-Framework-45-Features"),
        Feature("NET-WCF-TCP-PortSharing45", "TCP Port Sharing", "Feature", "NET-WCF-Services45"),
        Feature("PowerShellRoot", "Windows PowerShell", "Feature"),
        Feature("PowerShell", "Windows PowerShell 5.1", "Feature", "PowerShellRoot"),
        Feature("SNMP-Service", "SNMP Service", "Feature"),
        Feature("System-DataArchiver", "System Data Archiver", "Feature"),
        Feature("Telnet-Client", "Telnet Client", "Feature"),
        Feature("Windows-Defender", "Microsoft Defender Antivirus", "Feature"),
        Feature("Windows-Server-Backup", "Windows Server Backup", "Feature"),
        Feature("WoW64-Support", "WoW64 Support", "Feature"),
    )
}

#: what a fresh Windows Server Azure image has installed before anyone adds a role
DEFAULT_FEATURES = (
    "FileAndStorage-Services",
    "Storage-Services",
    "NET-Framework-45-Features",
    "NET-Framework-45-Core",
    "NET-WCF-Services45",
    "NET-WCF-TCP-PortSharing45",
    "Windows-Defender",
    "PowerShellRoot",
    "PowerShell",
    "System-DataArchiver",
    "WoW64-Support",
)


def with_parents(names: list[str]) -> list[str]:
    """Install-WindowsFeature installs a role service's parents too; so does the model."""
    installed: list[str] = []
    for name in names:
        feature: Feature | None = FEATURES[name.lower()]
        chain: list[str] = []
        while feature is not None:
            chain.append(feature.name)
            feature = FEATURES.get(feature.parent.lower()) if feature.parent else None
        for item in reversed(chain):
            if item not in installed:
                installed.append(item)
    return installed


class OsVersion(NamedTuple):
    product: str  # ProductName / Win32_OperatingSystem.Caption
    installation_type: str  # "Server" | "Client"


OS_VERSIONS: dict[str, OsVersion] = {
    "6.3.9600": OsVersion("Microsoft Windows Server 2012 R2 Datacenter", "Server"),
    "10.0.14393": OsVersion("Microsoft Windows Server 2016 Datacenter", "Server"),
    "10.0.17763": OsVersion("Microsoft Windows Server 2019 Datacenter", "Server"),
    "10.0.20348": OsVersion("Microsoft Windows Server 2022 Datacenter", "Server"),
    "10.0.26100": OsVersion("Microsoft Windows Server 2025 Datacenter", "Server"),
    "10.0.19045": OsVersion("Microsoft Windows 10 Enterprise", "Client"),
    "10.0.22631": OsVersion("Microsoft Windows 11 Enterprise", "Client"),
}

# Well-known locations (the model's file system and registry are case-insensitive, like NTFS's).
WINDIR = "C:\\Windows"
PANTHER = WINDIR + "\\Panther"
SYSPREP_DIR = WINDIR + "\\System32\\Sysprep"
SYSPREP_EXE = SYSPREP_DIR + "\\sysprep.exe"
SYSPREP_PANTHER = SYSPREP_DIR + "\\Panther"
SETUPERR_LOG = SYSPREP_PANTHER + "\\setuperr.log"
SETUPACT_LOG = SYSPREP_PANTHER + "\\setupact.log"
SUCCEEDED_TAG = SYSPREP_DIR + "\\Sysprep_succeeded.tag"
SYSPREP_UNATTEND = SYSPREP_DIR + "\\unattend.xml"
APPLICATION_HOST_CONFIG = WINDIR + "\\System32\\inetsrv\\config\\applicationHost.config"

SETUP_STATE_KEY = "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State"
CURRENT_VERSION_KEY = "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion"
UPGRADE_KEY = "HKLM\\SYSTEM\\Setup\\Upgrade"
SOURCE_OS_KEY = "HKLM\\SYSTEM\\Setup\\Source OS (Updated on 3/14/2023 09:26:53)"
WDS_TFTP_KEY = "HKLM\\SYSTEM\\CurrentControlSet\\Services\\WDSServer\\Providers\\WDSTFTP"
SESSION_MANAGER_KEY = "HKLM\\SYSTEM\\CurrentControlSet\\Control\\Session Manager"

IMAGE_STATE_COMPLETE = "IMAGE_STATE_COMPLETE"
IMAGE_STATE_UNDEPLOYABLE = "IMAGE_STATE_UNDEPLOYABLE"
IMAGE_STATE_RESEAL_TO_OOBE = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"

#: pending-reboot reasons and the registry evidence for each (what the facts script reads)
REBOOT_EVIDENCE = {
    "CBS RebootPending": (
        "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending"
    ),
    "WindowsUpdate RebootRequired": (
        "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired"
    ),
    "PendingFileRenameOperations": SESSION_MANAGER_KEY,
}

#: Azure's provisioning answer file, as Windows setup caches it (it deletes the password itself)
AZURE_CACHED_UNATTEND = """<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
  <settings pass="oobeSystem">
    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64">
      <UserAccounts>
        <AdministratorPassword>*SENSITIVE*DATA*DELETED*</AdministratorPassword>
      </UserAccounts>
    </component>
  </settings>
</unattend>
"""

#: the note the Azure guest agent leaves at the root of the temporary (resource) disk
DATALOSS_WARNING = "DATALOSS_WARNING_README.txt"
DATALOSS_WARNING_TEXT = (
    "WARNING: THIS IS A TEMPORARY DISK.\r\n\r\nAny data stored on this drive is SUBJECT TO LOSS and "
    "THERE IS NO WAY TO RECOVER IT.\r\n"
)
#: how Azure attaches disks to a generation 2 VM, as Windows sees them: the OS disk at LUN 0 and
#: the resource disk at LUN 1 of the first synthetic SCSI controller, data disks on the next
#: one (the VMBus instance ids of WALinuxAgent's 66-azure-storage.rules)
SCSI_CONTROLLER_0 = "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}"
SCSI_CONTROLLER_1 = "{f8b3781b-1e82-4818-a1c3-63d806ec15bb}"
VMBUS_STORAGE_CLASS = "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}"
