# Generalize this Windows installation with sysprep and report the outcome.
# Run over WinRM as the administrator, never through Run Command: sysprep must not run as SYSTEM.
# The script waits for sysprep to exit (a process started from a WinRM shell dies when that shell
# closes), so run it with a generous deadline and poll sysprep_status.ps1 from another shell.
# The harness replaces the arguments line with its --sysprep-args (default /generalize /oobe
# /shutdown /mode:vm, plus /quiet: over WinRM there is no desktop to answer a dialog). With
# /shutdown the connection usually drops when sysprep powers the machine off, and no report
# arrives: the poller and Azure's power state tell the outcome. With /quit (the line below, for
# running this script by hand) the report arrives and the caller powers the machine off
# afterwards (shutdown.ps1).
# Prints one JSON object: exit_code, image_state, succeeded_tag, setuperr (last lines).
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$sysprepDir = "$env:WINDIR\System32\Sysprep"
$arguments = @('/generalize', '/oobe', '/quit', '/mode:vm', '/quiet')  # the harness sets this line
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
