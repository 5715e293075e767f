# End a sysprep that is still running: the step's deadline passed, or the step failed while
# sysprep ran. Ended part-way through its generalize pass, sysprep leaves ImageState at
# IMAGE_STATE_UNDEPLOYABLE: the caller reads ImageState again afterwards.
# Prints one JSON object: stopped (how many processes were ended), running.
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$found = @(Get-Process -Name 'sysprep' -ErrorAction SilentlyContinue)
if ($found.Count -gt 0) {
    $found | Stop-Process -Force -ErrorAction SilentlyContinue
    $found | Wait-Process -Timeout 30 -ErrorAction SilentlyContinue
}
$result = [ordered]@{
    stopped = $found.Count
    running = [bool](Get-Process -Name 'sysprep' -ErrorAction SilentlyContinue)
}
[Console]::Out.Write(($result | ConvertTo-Json -Compress))
