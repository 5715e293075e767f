# Read-only: how the last sysprep run went. Prints one JSON object: running (a sysprep process
# exists), image_state, succeeded_tag, succeeded_tag_written (its LastWriteTimeUtc, round-trip
# format, or null), setuperr (last lines of Sysprep\Panther\setuperr.log).
# The process is looked at first: when it is gone, the ImageState read after it is final
# (IMAGE_STATE_UNDEPLOYABLE is normal while sysprep runs, a failure once it has exited).
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$sysprepDir = "$env:WINDIR\System32\Sysprep"
$running = [bool](Get-Process -Name 'sysprep' -ErrorAction SilentlyContinue)
$errorLog = "$sysprepDir\Panther\setuperr.log"
$errorLines = @()
if (Test-Path -Path $errorLog) {
    $errorLines = @(Get-Content -Path $errorLog -Tail 20 | Where-Object { $_.Trim() })
}
$tag = "$sysprepDir\Sysprep_succeeded.tag"
$tagWritten = $null
if (Test-Path -Path $tag) {
    $tagWritten = (Get-Item -LiteralPath $tag).LastWriteTimeUtc.ToString('o')
}
$status = [ordered]@{
    running               = $running
    image_state           = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -Name 'ImageState').ImageState
    succeeded_tag         = Test-Path -Path $tag
    succeeded_tag_written = $tagWritten
    setuperr              = $errorLines
}
[Console]::Out.Write(($status | ConvertTo-Json -Depth 3 -Compress))
