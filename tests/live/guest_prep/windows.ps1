# imageready live suite: a WinRM HTTPS listener on a Windows copy (run as SYSTEM through Azure Run
# Command). An Azure image has none; imageready reaches Windows over WinRM HTTPS with NTLM. The
# listener's certificate is self-signed for the VM's private IP and printed as PEM, so that the
# harness can be told to trust exactly it (IMAGEREADY_WINRM_CA_BUNDLE).
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$ip = (Get-NetIPAddress -AddressFamily IPv4 | Where-Object { $_.PrefixOrigin -eq 'Dhcp' } | Select-Object -First 1).IPAddress
$san = "2.5.29.17={text}IPAddress=$ip&DNS=$env:COMPUTERNAME"
$cert = New-SelfSignedCertificate -CertStoreLocation 'Cert:\LocalMachine\My' -Subject "CN=$env:COMPUTERNAME" -TextExtension @($san) -NotAfter (Get-Date).AddDays(2)
Get-ChildItem -Path WSMan:\localhost\Listener | Where-Object { $_.Keys -contains 'Transport=HTTPS' } | Remove-Item -Recurse -Force
New-Item -Path WSMan:\localhost\Listener -Transport HTTPS -Address * -CertificateThumbPrint $cert.Thumbprint -Force | Out-Null
New-NetFirewallRule -DisplayName 'WinRM HTTPS (imageready live)' -Direction Inbound -Protocol TCP -LocalPort 5986 -Action Allow | Out-Null
'-----BEGIN CERTIFICATE-----'
[Convert]::ToBase64String($cert.RawData, 'InsertLineBreaks')
'-----END CERTIFICATE-----'
