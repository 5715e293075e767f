# Read-only, after a failed or stuck sysprep: the last lines of Sysprep\Panther\setuperr.log and
# setupact.log, and the state the machine is in. Prints one JSON object: image_state,
# succeeded_tag, setuperr, setupact (lists of lines), running.
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$sysprepDir = "$env:WINDIR\System32\Sysprep"
function Get-Tail([string] $Path, [int] $Count) {
    if (Test-Path -Path $Path) { return @(Get-Content -Path $Path -Tail $Count | Where-Object { $_.Trim() }) }
    return @()
}
$logs = [ordered]@{
    image_state   = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -Name 'ImageState').ImageState
    succeeded_tag = Test-Path -Path "$sysprepDir\Sysprep_succeeded.tag"
    setuperr      = Get-Tail "$sysprepDir\Panther\setuperr.log" 60
    setupact      = Get-Tail "$sysprepDir\Panther\setupact.log" 120
    running       = [bool](Get-Process -Name 'sysprep' -ErrorAction SilentlyContinue)
}
[Console]::Out.Write(($logs | ConvertTo-Json -Depth 3 -Compress))
