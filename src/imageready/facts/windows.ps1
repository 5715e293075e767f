# imageready Windows facts (schema: SCHEMA.md beside this file, section "Windows").
# One read-only round trip: every probe runs in its own try/catch; a failed probe leaves null
# and an entry in "errors", and the script still prints one compressed JSON object and exits 0.
# Windows PowerShell 5.1 compatible. The unary comma in ",@(...)" keeps a list of zero or one
# items a list when it leaves the probe's script block (PowerShell would unroll it otherwise).
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$facts = [ordered]@{ schema = 1; os_family = 'Windows' }
$probeErrors = New-Object System.Collections.ArrayList

function Invoke-Probe {
    param([string]$Name, [scriptblock]$Probe)
    try {
        $facts[$Name] = & $Probe
    } catch {
        $facts[$Name] = $null
        [void]$probeErrors.Add([ordered]@{ probe = $Name; error = $_.Exception.Message })
    }
}

Invoke-Probe 'hostname' { [Environment]::MachineName }

Invoke-Probe 'user' {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    [ordered]@{
        name      = $identity.Name
        sid       = $identity.User.Value
        is_admin  = $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
        is_system = $identity.IsSystem
    }
}

Invoke-Probe 'os' {
    $os = Get-CimInstance -ClassName Win32_OperatingSystem
    $current = Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
    # an in-place upgrade leaves HKLM\SYSTEM\Setup\Upgrade or "Source OS (Updated on ...)" keys
    $sourceOs = @(Get-ChildItem -Path 'HKLM:\SYSTEM\Setup' | Where-Object { $_.PSChildName -like 'Source OS*' })
    [ordered]@{
        caption           = $os.Caption
        version           = $os.Version
        build             = $os.BuildNumber
        installation_type = $current.InstallationType
        upgraded          = (Test-Path -Path 'HKLM:\SYSTEM\Setup\Upgrade') -or ($sourceOs.Count -gt 0)
    }
}

Invoke-Probe 'features' {
    ,@(Get-WindowsFeature | Where-Object { $_.Installed } | ForEach-Object {
            [ordered]@{ name = $_.Name; display_name = $_.DisplayName; feature_type = [string]$_.FeatureType }
        })
}

Invoke-Probe 'role_details' {
    $installed = @(Get-WindowsFeature -Name 'WDS', 'Hyper-V', 'Web-Server' | Where-Object { $_.Installed } | ForEach-Object { $_.Name })
    $details = [ordered]@{}
    if ($installed -contains 'WDS') {
        # wdsutil /initialize-server sets the TFTP root folder
        $tftp = Get-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Services\WDSServer\Providers\WDSTFTP' -ErrorAction SilentlyContinue
        $details['WDS'] = [ordered]@{ initialized = [bool]($tftp -and $tftp.RootFolder) }
    }
    if ($installed -contains 'Hyper-V') {
        $details['Hyper-V'] = [ordered]@{ virtual_switches = @(Get-VMSwitch).Count }
    }
    if ($installed -contains 'Web-Server') {
        $config = "$env:WINDIR\System32\inetsrv\config\applicationHost.config"
        $encrypted = (Test-Path -Path $config) -and [bool](Select-String -Path $config -Pattern '[enc:' -SimpleMatch -Quiet)
        $details['Web-Server'] = [ordered]@{ encrypted_credentials = $encrypted }
    }
    $details
}

Invoke-Probe 'bitlocker' {
    # Without the BitLocker feature there are no BitLocker cmdlets and no BitLocker volumes.
    if (-not (Get-Command -Name 'Get-BitLockerVolume' -ErrorAction SilentlyContinue)) { return , @() }
    ,@(Get-BitLockerVolume | ForEach-Object {
            [ordered]@{
                mount_point           = $_.MountPoint
                volume_type           = [string]$_.VolumeType
                protection_status     = [string]$_.ProtectionStatus
                encryption_percentage = [double]$_.EncryptionPercentage
                volume_status         = [string]$_.VolumeStatus
                encryption_method     = [string]$_.EncryptionMethod
            }
        })
}

Invoke-Probe 'domain' {
    $system = Get-CimInstance -ClassName Win32_ComputerSystem
    [ordered]@{ part_of_domain = [bool]$system.PartOfDomain; domain = $system.Domain }
}

Invoke-Probe 'pending_reboot' {
    $reasons = New-Object System.Collections.ArrayList
    if (Test-Path -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending') {
        [void]$reasons.Add('CBS RebootPending')
    }
    if (Test-Path -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired') {
        [void]$reasons.Add('WindowsUpdate RebootRequired')
    }
    $sessionManager = Get-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager' -Name 'PendingFileRenameOperations' -ErrorAction SilentlyContinue
    if ($sessionManager -and $sessionManager.PendingFileRenameOperations) {
        [void]$reasons.Add('PendingFileRenameOperations')
    }
    [ordered]@{ pending = ($reasons.Count -gt 0); reasons = @($reasons) }
}

Invoke-Probe 'appx_not_provisioned' {
    # sysprep /generalize fails on a package installed for a user but not provisioned for all
    $provisioned = @(Get-AppxProvisionedPackage -Online | ForEach-Object { $_.DisplayName })
    ,@(Get-AppxPackage -AllUsers |
            Where-Object { ($provisioned -notcontains $_.Name) -and -not $_.IsFramework -and ([string]$_.SignatureKind -ne 'System') } |
            ForEach-Object {
                $package = $_
                $package.PackageUserInformation | Where-Object { [string]$_.InstallState -eq 'Installed' } | ForEach-Object {
                    [ordered]@{ name = $package.Name; user = [string]$_.UserSecurityId.Username }
                }
            })
}

Invoke-Probe 'image_state' {
    (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -Name 'ImageState').ImageState
}

Invoke-Probe 'generalize_count' {
    [int](Get-CimInstance -ClassName SoftwareLicensingService).RemainingWindowsReArmCount
}

Invoke-Probe 'panther' {
    $panther = "$env:WINDIR\Panther"
    $exists = Test-Path -Path $panther
    $count = 0
    if ($exists) { $count = @(Get-ChildItem -Path $panther -Recurse -File -Force).Count }
    [ordered]@{ exists = $exists; file_count = $count }
}

Invoke-Probe 'unattend_files' {
    # where Windows setup looks for an answer file (implicit search order)
    $candidates = @(
        "$env:WINDIR\Panther\Unattend\Unattend.xml",
        "$env:WINDIR\Panther\Unattend\Autounattend.xml",
        "$env:WINDIR\Panther\Unattend.xml",
        "$env:WINDIR\Panther\Autounattend.xml",
        "$env:WINDIR\System32\Sysprep\Unattend.xml",
        "$env:WINDIR\System32\Sysprep\Autounattend.xml",
        "$env:SystemDrive\Unattend.xml",
        "$env:SystemDrive\Autounattend.xml"
    )
    ,@($candidates | Where-Object { Test-Path -LiteralPath $_ -PathType Leaf })
}

Invoke-Probe 'services' {
    $startTypes = @{ Auto = 'Automatic'; Manual = 'Manual'; Disabled = 'Disabled'; Boot = 'Boot'; System = 'System' }
    $services = [ordered]@{}
    foreach ($name in @('RdAgent', 'WindowsAzureGuestAgent', 'cdrom')) {
        # cdrom is a driver: Win32_SystemDriver, not Win32_Service
        $filter = "Name='$name'"
        $found = @(Get-CimInstance -ClassName Win32_Service -Filter $filter) + @(Get-CimInstance -ClassName Win32_SystemDriver -Filter $filter)
        if ($found.Count -gt 0) {
            $services[$name] = [ordered]@{ status = [string]$found[0].State; start_type = $startTypes[[string]$found[0].StartMode] }
        } else {
            $services[$name] = $null
        }
    }
    $services
}

Invoke-Probe 'sysprep_providers_failed' {
    $log = "$env:WINDIR\System32\Sysprep\Panther\setuperr.log"
    if (-not (Test-Path -Path $log)) { return , @() }
    ,@(Select-String -Path $log -Pattern "Failure occurred while executing '([^']+)' from (\S+?);" |
            ForEach-Object {
                [pscustomobject]@{ name = Split-Path -Path $_.Matches[0].Groups[2].Value -Leaf; detail = $_.Matches[0].Groups[1].Value }
            } |
            Sort-Object -Property 'name', 'detail' -Unique)
}

# Which VM this is (IMDS, the SMBIOS UUID): the function of scripts/identity_windows.ps1, put in
# its place below by facts/windows.py, so the facts and every later session read it alike.
# IMAGEREADY-IDENTITY-FUNCTION
Invoke-Probe 'identity' { Get-ImagereadyIdentity }

$facts['errors'] = @($probeErrors)
[Console]::Out.Write(($facts | ConvertTo-Json -Depth 6 -Compress))
exit 0
