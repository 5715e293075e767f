# Before sysprep: delete C:\Windows\Panther (Azure's generalize procedure asks for it: setup logs
# and a cached answer file) and Sysprep\unattend.xml (a custom answer file is not supported on
# Azure, and it often holds passwords). Prints one JSON object: panther_existed, removed_files,
# unattend_existed, exists (true if either is still there).
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$panther = "$env:WINDIR\Panther"
$unattend = "$env:WINDIR\System32\Sysprep\unattend.xml"
$pantherExisted = Test-Path -Path $panther
$unattendExisted = Test-Path -Path $unattend
$count = 0
if ($pantherExisted) {
    $count = @(Get-ChildItem -Path $panther -Recurse -File -Force).Count
    Remove-Item -LiteralPath $panther -Recurse -Force
}
if ($unattendExisted) {
    Remove-Item -LiteralPath $unattend -Force
}
$result = [ordered]@{
    panther_existed  = $pantherExisted
    removed_files    = $count
    unattend_existed = $unattendExisted
    exists           = ((Test-Path -Path $panther) -or (Test-Path -Path $unattend))
}
[Console]::Out.Write(($result | ConvertTo-Json -Compress))
