# Generalize this Windows installation with sysprep and report the outcome; the machine stays up.
# Run over WinRM as the administrator, never through Run Command: sysprep must not run as SYSTEM.
# /quit, not /shutdown: the outcome is verified while the guest still answers, and the caller
# powers it off afterwards (shutdown.ps1). The script waits for sysprep to exit (a process
# started from a WinRM shell dies when that shell closes), so run it with a generous deadline.
# Prints one JSON object: exit_code, image_state, succeeded_tag, setuperr (last lines).
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$sysprepDir = "$env:WINDIR\System32\Sysprep"
$arguments = @('/generalize', '/oobe', '/quit', '/mode:vm', '/quiet')
$process = Start-Process -FilePath "$sysprepDir\sysprep.exe" -ArgumentList $arguments -PassThru -Wait

$state = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -Name 'ImageState').ImageState
$errorLog = "$sysprepDir\Panther\setuperr.log"
$errorLines = @()
if (Test-Path -Path $errorLog) {
    $errorLines = @(Get-Content -Path $errorLog -Tail 20 | Where-Object { $_.Trim() })
}
$report = [ordered]@{
    exit_code     = $process.ExitCode
    image_state   = $state
    succeeded_tag = Test-Path -Path "$sysprepDir\Sysprep_succeeded.tag"
    setuperr      = $errorLines
}
[Console]::Out.Write(($report | ConvertTo-Json -Depth 3 -Compress))
