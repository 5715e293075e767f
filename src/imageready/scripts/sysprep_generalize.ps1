# Generalize this Windows installation with sysprep, report what it does while it runs, and
# report the outcome. Run over WinRM as the administrator, never through Run Command: sysprep
# must not run as SYSTEM. The script stays until sysprep exits (a process started from a WinRM
# shell dies when that shell closes), so run it with a generous deadline.
# The harness replaces the arguments line with its --sysprep-args (default /generalize /oobe
# /shutdown, plus /quiet: over WinRM there is no desktop to answer a dialog).
# While sysprep runs, every 100 ms it reads ImageState and the LastWriteTimeUtc of
# Sysprep_succeeded.tag, and prints `PROGRESS sysprep {json}` on stderr whenever they change: the
# harness sees the reseal as it happens, also with /shutdown, where the connection drops when
# sysprep powers the machine off and the final report below never arrives. With /quit (the line
# below, for running this script by hand) the report arrives and the caller powers the machine
# off afterwards (shutdown.ps1).
# Prints one JSON object: exit_code, image_state, succeeded_tag, succeeded_tag_written, setuperr.
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$sysprepDir = "$env:WINDIR\System32\Sysprep"
$tag = "$sysprepDir\Sysprep_succeeded.tag"
$arguments = @('/generalize', '/oobe', '/quit', '/quiet')  # the harness sets this line

function Get-SysprepState {
    $written = $null
    if (Test-Path -Path $tag) {
        $written = (Get-Item -LiteralPath $tag).LastWriteTimeUtc.ToString('o')
    }
    [ordered]@{
        image_state           = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -Name 'ImageState').ImageState
        succeeded_tag_written = $written
    }
}

$process = Start-Process -FilePath "$sysprepDir\sysprep.exe" -ArgumentList $arguments -PassThru
$null = $process.Handle  # keeps the handle, so that ExitCode is known after the process exits
$last = ''
do {
    $exited = $process.HasExited
    $line = (Get-SysprepState | ConvertTo-Json -Compress)
    if ($line -ne $last) {
        [Console]::Error.WriteLine("PROGRESS sysprep $line")
        $last = $line
    }
    if (-not $exited) { Start-Sleep -Milliseconds 100 }
} until ($exited)

$state = Get-SysprepState
$errorLog = "$sysprepDir\Panther\setuperr.log"
$errorLines = @()
if (Test-Path -Path $errorLog) {
    $errorLines = @(Get-Content -Path $errorLog -Tail 20 | Where-Object { $_.Trim() })
}
$report = [ordered]@{
    exit_code             = $process.ExitCode
    image_state           = $state.image_state
    succeeded_tag         = Test-Path -Path $tag
    succeeded_tag_written = $state.succeeded_tag_written
    setuperr              = $errorLines
}
[Console]::Out.Write(($report | ConvertTo-Json -Depth 3 -Compress))
