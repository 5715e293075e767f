# imageready guest identity probe (read-only): which VM is this?
# One JSON object: imds (vmId, name, resourceId from IMDS, asked without any proxy as Microsoft's
# IMDS page requires) or null with imds_error; smbios_uuid (Win32_ComputerSystemProduct.UUID, the
# SMBIOS system UUID that Azure sets to the vmId) or null with smbios_error.
# The facts script (facts/windows.ps1) runs the same function, above its marker line.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Get-ImagereadyIdentity {
    # Windows PowerShell 5.1 has no Invoke-RestMethod -NoProxy: a WebRequest with Proxy = $null
    $identity = [ordered]@{ imds = $null; imds_error = $null; smbios_uuid = $null; smbios_error = $null }
    try {
        $request = [Net.WebRequest]::Create('http://169.254.169.254/metadata/instance/compute?api-version=2021-02-01')
        $request.Proxy = $null
        $request.Headers.Add('Metadata', 'true')
        $request.Timeout = 5000
        $response = $request.GetResponse()
        try {
            $compute = (New-Object IO.StreamReader($response.GetResponseStream())).ReadToEnd() | ConvertFrom-Json
        } finally {
            $response.Close()
        }
        $identity['imds'] = [ordered]@{ vmId = [string]$compute.vmId; name = [string]$compute.name; resourceId = [string]$compute.resourceId }
    } catch {
        $identity['imds_error'] = $_.Exception.Message
    }
    try {
        $identity['smbios_uuid'] = [string](Get-CimInstance -ClassName Win32_ComputerSystemProduct).UUID
    } catch {
        $identity['smbios_error'] = $_.Exception.Message
    }
    $identity
}

# imageready: end of the identity function
[Console]::Out.Write((Get-ImagereadyIdentity | ConvertTo-Json -Depth 3 -Compress))
exit 0
