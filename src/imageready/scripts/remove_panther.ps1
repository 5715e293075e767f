# Delete C:\Windows\Panther before sysprep (Azure's generalize procedure asks for it: it holds
# setup logs and the cached answer file). Prints one JSON object: existed, removed_files, exists.
# Windows PowerShell 5.1 compatible.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$panther = "$env:WINDIR\Panther"
$existed = Test-Path -Path $panther
$count = 0
if ($existed) {
    $count = @(Get-ChildItem -Path $panther -Recurse -File -Force).Count
    Remove-Item -LiteralPath $panther -Recurse -Force
}
$result = [ordered]@{ existed = $existed; removed_files = $count; exists = (Test-Path -Path $panther) }
[Console]::Out.Write(($result | ConvertTo-Json -Compress))
