# Power the machine off from inside (after sysprep /quit): returns at once, the power goes
# 5 seconds later, so the caller gets this answer before the WinRM connection drops.
# A machine sysprep generalized must not boot again before Azure captures it.
$ErrorActionPreference = 'Stop'
& "$env:WINDIR\System32\shutdown.exe" /s /t 5 /f /d p:4:1 /c 'imageready: generalized by sysprep'
exit $LASTEXITCODE
