# Read-only: how the last sysprep run went. Prints one JSON object: image_state, succeeded_tag,
# setuperr (last lines of Sysprep\Panther\setuperr.log), running (a sysprep process exists).
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$sysprepDir = "$env:WINDIR\System32\Sysprep"
$errorLog = "$sysprepDir\Panther\setuperr.log"
$errorLines = @()
if (Test-Path -Path $errorLog) {
    $errorLines = @(Get-Content -Path $errorLog -Tail 20 | Where-Object { $_.Trim() })
}
$status = [ordered]@{
    image_state   = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -Name 'ImageState').ImageState
    succeeded_tag = Test-Path -Path "$sysprepDir\Sysprep_succeeded.tag"
    setuperr      = $errorLines
    running       = [bool](Get-Process -Name 'sysprep' -ErrorAction SilentlyContinue)
}
[Console]::Out.Write(($status | ConvertTo-Json -Depth 3 -Compress))
