# Before sysprep: read the guest's clock and ImageState, then delete C:\Windows\Panther (Azure's
# generalize procedure asks for it: setup logs and a cached answer file), Sysprep\unattend.xml (a
# custom answer file is not supported on Azure, and it often holds passwords) and an old
# Sysprep_succeeded.tag (a tag from an earlier sysprep proves nothing about this one). The harness
# counts a succeeded tag only when it was written after `started` (both on the guest's clock).
# Prints one JSON object: started, image_state, panther_existed, removed_files, unattend_existed,
# tag_existed, exists (true if any of the three is still there).
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$started = [DateTime]::UtcNow.ToString('o')
$imageState = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State' -Name 'ImageState').ImageState
$panther = "$env:WINDIR\Panther"
$unattend = "$env:WINDIR\System32\Sysprep\unattend.xml"
$tag = "$env:WINDIR\System32\Sysprep\Sysprep_succeeded.tag"
$pantherExisted = Test-Path -Path $panther
$unattendExisted = Test-Path -Path $unattend
$tagExisted = Test-Path -Path $tag
$count = 0
if ($pantherExisted) {
    $count = @(Get-ChildItem -Path $panther -Recurse -File -Force).Count
    Remove-Item -LiteralPath $panther -Recurse -Force
}
if ($unattendExisted) {
    Remove-Item -LiteralPath $unattend -Force
}
if ($tagExisted) {
    Remove-Item -LiteralPath $tag -Force
}
$result = [ordered]@{
    started          = $started
    image_state      = $imageState
    panther_existed  = $pantherExisted
    removed_files    = $count
    unattend_existed = $unattendExisted
    tag_existed      = $tagExisted
    exists           = ((Test-Path -Path $panther) -or (Test-Path -Path $unattend) -or (Test-Path -Path $tag))
}
[Console]::Out.Write(($result | ConvertTo-Json -Compress))
