# imageready sensitive-data scan for Windows (PowerShell 5.1, .NET enumeration, read-only).
#
# The engine embeds the configuration (rules, compiled path patterns, the HMAC key) below; the
# script travels over stdin, never on a command line. It walks every fixed volume except the
# Azure temporary disk with [IO.DirectoryInfo]::EnumerateFileSystemInfos (one try/catch per
# directory, reparse points not followed), matches paths against location rules, reads text
# files up to the size limit once and applies the content rules with [regex], reads the
# registry values and certificate stores the rules name, and the PowerShell script block log.
# It writes nothing. Values never leave in clear: rule, path, line, length, at most the first 4
# characters (none under 12) and HMAC-SHA256(key, value) truncated to 16 hex characters.
# stdout: one JSON document; stderr: PROGRESS lines at most every 2 seconds.

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8  # JSON out in UTF-8 whatever the code page
$ConfigBase64 = ''  # the engine replaces this line

$Config = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($ConfigBase64)) | ConvertFrom-Json
$Clock = [Diagnostics.Stopwatch]::StartNew()
$Budget = [double]$Config.budget
$MaxSize = [long]$Config.max_file_size
$KeyBytes = [byte[]]@(for ($i = 0; $i -lt $Config.key.Length; $i += 2) { [Convert]::ToByte($Config.key.Substring($i, 2), 16) })
$Hmac = New-Object Security.Cryptography.HMACSHA256 -ArgumentList (, $KeyBytes)
$Sha = [Security.Cryptography.SHA256]::Create()
$Utf8 = New-Object Text.UTF8Encoding -ArgumentList $false
$CaseFree = [Text.RegularExpressions.RegexOptions]'IgnoreCase, CultureInvariant'
$Exact = [Text.RegularExpressions.RegexOptions]'CultureInvariant'
$SysDrive = [regex]::Escape($env:SystemDrive)
# the component store and servicing caches: Windows' own files, walked by nobody
$SkipDirs = @('\Windows\WinSxS', '\Windows\servicing', '\Windows\Installer', '\Windows\assembly',
    '\Windows\Microsoft.NET', '\Windows\System32\DriverStore', '\Windows\SoftwareDistribution',
    '\System Volume Information') | ForEach-Object { ($env:SystemDrive + $_).ToLowerInvariant() }
$BinaryExt = @('.exe', '.dll', '.sys', '.mui', '.cat', '.msi', '.msp', '.cab', '.pdb', '.etl',
    '.evtx', '.png', '.jpg', '.gif', '.ico', '.zip', '.7z', '.wim', '.vhd', '.vhdx', '.iso', '.dat',
    '.bin', '.pyc', '.lib', '.obj', '.ttf', '.otf', '.winmd', '.db', '.edb', '.jfm', '.pf')
$KeyLine = [regex]::new('^[ \t"''+]*(?:([A-Za-z0-9+/=]+)|[A-Za-z-]+: [^"'']*)?[ \t"'',+;]*(?:\\n)?[ \t"'',+;]*\r?$', $Exact)

$Findings = New-Object 'System.Collections.Generic.Dictionary[string,object]'
$Errors = New-Object 'System.Collections.Generic.List[string]'
$Stats = [ordered]@{ engine = 'powershell'; files = 0; dirs = 0; bytes = [long]0; content_files = 0
    content_bytes = [long]0; skipped_large = 0; skipped_large_paths = @(); excluded_paths = @()
    suppressed_examples = 0; suppressed_package_files = 0; candidate_lines = 0 }
$script:Complete = $true
$script:NextProgress = 2.0

function Test-Expired {
    if ($Clock.Elapsed.TotalSeconds -ge $Budget) {
        if ($script:Complete) { $Errors.Add('deadline passed: scan stopped early') }
        $script:Complete = $false
    }
    return -not $script:Complete
}

function Write-ScanProgress([string]$Phase) {
    if ($Clock.Elapsed.TotalSeconds -lt $script:NextProgress) { return }
    $script:NextProgress = $Clock.Elapsed.TotalSeconds + 2.0
    [Console]::Error.WriteLine(('PROGRESS phase={0} files={1} mb={2:N1} elapsed={3:N1}s' -f $Phase,
        $Stats.files, ($Stats.bytes / 1048576), $Clock.Elapsed.TotalSeconds))
}

function Get-Fingerprint([byte[]]$Bytes) {
    $hash = $Hmac.ComputeHash($Bytes)
    return (($hash[0..7] | ForEach-Object { $_.ToString('x2') }) -join '')
}

function Add-Finding($Rule, [string]$Path, $Line, [byte[]]$Value, [bool]$Shown, [string]$Detail, $Length) {
    $fp = Get-Fingerprint $Value
    $prefix = ''
    if ($Shown -and $Value.Length -ge 12) { $prefix = $Utf8.GetString($Value, 0, 4) }
    if ($null -eq $Length) { $Length = $Value.Length }
    $id = '{0}|{1}|{2}|{3}' -f $Rule.id, $Path, $Line, $fp
    if (-not $Findings.ContainsKey($id)) {
        $Findings[$id] = [ordered]@{ rule = $Rule.id; path = $Path; line = $Line; length = $Length
            prefix = $prefix; fp = $fp; detail = $Detail }
    }
}

# --- rules ---------------------------------------------------------------------------------------
$Rules = @($Config.rules)
foreach ($rule in $Rules) {
    $rule | Add-Member -NotePropertyName rx -NotePropertyValue $null
    $rule | Add-Member -NotePropertyName ignore_rx -NotePropertyValue $null
    $rule | Add-Member -NotePropertyName excl_rx -NotePropertyValue $null
    if ($rule.pattern) {
        $options = if ($rule.ignore_case) { $CaseFree } else { $Exact }
        $rule.rx = [regex]::new($rule.pattern, $options)
    }
    if ($rule.ignore_values) { $rule.ignore_rx = [regex]::new('^(' + $rule.ignore_values + ')$', $CaseFree) }
    if ($rule.exclude_re) { $rule.excl_rx = [regex]::new($rule.exclude_re.Replace('@SYSDRIVE@', $SysDrive), $CaseFree) }
}
$GrepRules = @($Rules | Where-Object { $_.mode -eq 'grep' })
$AnyContent = $null
if ($GrepRules.Count) { $AnyContent = [regex]::new((($GrepRules | ForEach-Object { '(' + $_.ere + ')' }) -join '|'), $Exact) }
$ByName = @{}
$ByPattern = New-Object 'System.Collections.Generic.List[object]'
$ByDir = New-Object 'System.Collections.Generic.List[object]'
foreach ($glob in @($Config.globs)) {
    $rule = $Rules[$glob.rule]
    $pathRx = [regex]::new($glob.path_re.Replace('@SYSDRIVE@', $SysDrive), $CaseFree)
    if ($null -ne $glob.dir_re) {
        $ByDir.Add(@{ rx = [regex]::new($glob.dir_re.Replace('@SYSDRIVE@', $SysDrive), $CaseFree); recursive = [bool]$glob.recursive; rule = $rule })
    } elseif ($null -ne $glob.name) {
        $key = $glob.name.ToLowerInvariant()
        if (-not $ByName.ContainsKey($key)) { $ByName[$key] = New-Object 'System.Collections.Generic.List[object]' }
        $ByName[$key].Add(@{ path = $pathRx; rule = $rule })
    } else {
        $ByPattern.Add(@{ name = [regex]::new('^' + $glob.name_re, $CaseFree); path = $pathRx; rule = $rule })
    }
}
$PathHits = New-Object 'System.Collections.Generic.List[object]'

function Test-Value($Rule, [string]$Value) {
    if ($null -ne $Rule.ignore_rx -and $Rule.ignore_rx.IsMatch($Value)) { return $false }
    foreach ($example in @($Config.examples)) {
        if ($Value.Contains($example)) { $Stats.suppressed_examples++; return $false }
    }
    if ($Rule.decode -eq 'unattend-password') {
        try { $text = [Text.Encoding]::Unicode.GetString([Convert]::FromBase64String($Value)) } catch { return $false }
        return ($text.EndsWith('Password') -and $text.Length -gt 8)
    }
    return $true
}

function Get-BlockBody([string[]]$Lines, [int]$Index, [string]$Rest, [string]$End) {
    # key material between a BEGIN header and its END marker, or $null (a header in code, say)
    $parts = New-Object 'System.Collections.Generic.List[string]'
    if ($Rest.Contains($End)) {
        $parts.AddRange([string[]]($Rest.Substring(0, $Rest.IndexOf($End)).Replace('\n', "`n") -split "`n"))
    } else {
        $parts.AddRange([string[]]($Rest.Replace('\n', "`n") -split "`n"))
        $found = $false
        for ($j = $Index + 1; $j -lt [Math]::Min($Lines.Count, $Index + 401); $j++) {
            if ($Lines[$j].Contains($End)) { $parts.Add($Lines[$j].Substring(0, $Lines[$j].IndexOf($End))); $found = $true; break }
            if (-not $KeyLine.IsMatch($Lines[$j])) { return $null }
            $parts.Add($Lines[$j])
        }
        if (-not $found) { return $null }
    }
    $body = New-Object Text.StringBuilder
    foreach ($part in $parts) {
        $m = $KeyLine.Match($part.Replace('\n', ''))
        if (-not $m.Success) { return $null }
        [void]$body.Append($m.Groups[1].Value)
    }
    if ($body.Length -lt 64) { return $null }
    return $body.ToString()
}

function Test-Lines($RuleSet, [string]$Path, [string[]]$Lines) {
    for ($i = 0; $i -lt $Lines.Count; $i++) {
        $line = $Lines[$i]
        foreach ($rule in $RuleSet) {
            foreach ($m in $rule.rx.Matches($line)) {
                $value = $m.Groups[[int]$rule.group].Value
                if ($rule.block_end) {
                    $value = Get-BlockBody $Lines $i $line.Substring($m.Index + $m.Length) $rule.block_end
                    if ($null -eq $value) { continue }
                }
                if (-not (Test-Value $rule $value)) { continue }
                $detail = ''
                if ($rule.detail_group) { $detail = '{0}={1}' -f $rule.detail_label, $m.Groups[[int]$rule.detail_group].Value }
                Add-Finding $rule $Path ($i + 1) $Utf8.GetBytes($value) $true $detail $null
            }
        }
    }
}

function Read-Text([string]$Path) {
    $bytes = [IO.File]::ReadAllBytes($Path)
    $utf16 = $bytes.Length -ge 2 -and (($bytes[0] -eq 0xFF -and $bytes[1] -eq 0xFE) -or ($bytes[0] -eq 0xFE -and $bytes[1] -eq 0xFF))
    if (-not $utf16 -and [Array]::IndexOf($bytes, [byte]0, 0, [Math]::Min($bytes.Length, 8192)) -ge 0) { return $null }
    $reader = New-Object IO.StreamReader -ArgumentList (New-Object IO.MemoryStream -ArgumentList (, $bytes)), $Utf8, $true
    try { return $reader.ReadToEnd() } finally { $reader.Dispose() }
}

function Test-Content([string]$Path) {
    $text = Read-Text $Path
    if ($null -eq $text -or $null -eq $AnyContent -or -not $AnyContent.IsMatch($text)) { return }
    $lines = $text -split "\r?\n"
    $Stats.candidate_lines += $lines.Count
    Test-Lines $GrepRules $Path $lines
}

function Find-PathRule([string]$Path, [string]$Name, [long]$Size, $Active) {
    $hits = New-Object 'System.Collections.Generic.List[object]'
    $named = $ByName[$Name.ToLowerInvariant()]
    if ($null -ne $named) { foreach ($g in $named) { if ($g.path.IsMatch($Path)) { $hits.Add($g.rule) } } }
    foreach ($g in $ByPattern) { if ($g.name.IsMatch($Name) -and $g.path.IsMatch($Path)) { $hits.Add($g.rule) } }
    foreach ($d in $Active) { $hits.Add($d.rule) }
    foreach ($rule in $hits) {
        if ($null -eq $rule.excl_rx -or -not $rule.excl_rx.IsMatch($Path)) { $PathHits.Add(@($rule, $Path, $Size)) }
    }
}

function Get-ActiveDirRules([string]$Path, $Inherited) {
    $active = @($Inherited | Where-Object { $_.recursive })
    foreach ($d in $ByDir) { if ($active -notcontains $d -and $d.rx.IsMatch($Path)) { $active += $d } }
    return , $active
}

# --- walk ----------------------------------------------------------------------------------------
$Volumes = @([IO.DriveInfo]::GetDrives() | Where-Object { $_.DriveType -eq 'Fixed' -and $_.IsReady })
foreach ($volume in $Volumes) {
    $root = $volume.RootDirectory.FullName
    if ($volume.VolumeLabel -eq 'Temporary Storage' -or [IO.File]::Exists((Join-Path $root 'DATALOSS_WARNING_README.txt'))) {
        $Stats.excluded_paths += $root
        continue
    }
    $stack = New-Object 'System.Collections.Generic.Stack[object]'
    $stack.Push(@($volume.RootDirectory, (Get-ActiveDirRules $root.TrimEnd('\') @())))
    while ($stack.Count -gt 0 -and -not (Test-Expired)) {
        $directory, $active = $stack.Pop()
        $Stats.dirs++
        try { $entries = @($directory.EnumerateFileSystemInfos()) }
        catch { if ($Errors.Count -lt 50) { $Errors.Add('cannot list {0}: {1}' -f $directory.FullName, $_.Exception.GetType().Name) }; continue }
        foreach ($entry in $entries) {
            $attributes = $entry.Attributes
            if ($attributes -band [IO.FileAttributes]::ReparsePoint) { continue }
            $path = $entry.FullName
            if ($attributes -band [IO.FileAttributes]::Directory) {
                if ($SkipDirs -notcontains $path.ToLowerInvariant()) { $stack.Push(@($entry, (Get-ActiveDirRules $path $active))) }
                continue
            }
            $size = $entry.Length
            $Stats.files++
            $Stats.bytes += $size
            Find-PathRule $path $entry.Name $size $active
            if ($size -gt $MaxSize) {
                $Stats.skipped_large++
                if ($Stats.skipped_large_paths.Count -lt 20) { $Stats.skipped_large_paths += $path }
            } elseif ($size -gt 0 -and $BinaryExt -notcontains $entry.Extension.ToLowerInvariant()) {
                $Stats.content_files++
                $Stats.content_bytes += $size
                try { Test-Content $path } catch { if ($Errors.Count -lt 50) { $Errors.Add('cannot read {0}: {1}' -f $path, $_.Exception.GetType().Name) } }
            }
        }
        Write-ScanProgress 'walk'
    }
}

# --- rules scoped to paths: presence, or a pattern in those files --------------------------------
foreach ($hit in $PathHits) {
    if (Test-Expired) { break }
    $rule, $path, $size = $hit
    try {
        if ($rule.mode -eq 'presence') {
            if ($size -lt 1) { continue }
            $digest = 'size:{0}' -f $size
            if ($size -le $MaxSize) { $digest = (($Sha.ComputeHash([IO.File]::ReadAllBytes($path)) | ForEach-Object { $_.ToString('x2') }) -join '') }
            $material = $Utf8.GetBytes(('location{0}{1}{0}{2}{0}{3}' -f [char]0, $rule.id, $path, $digest))
            Add-Finding $rule $path $null $material $false '' $size
        } elseif ($size -le $MaxSize) {
            $text = Read-Text $path
            if ($null -ne $text) { Test-Lines @($rule) $path ($text -split "\r?\n") }
        }
    } catch { if ($Errors.Count -lt 50) { $Errors.Add('cannot read {0}: {1}' -f $path, $_.Exception.GetType().Name) } }
}

# --- registry values and certificate stores ------------------------------------------------------
foreach ($provider in @($Config.providers)) {
    $rule = $Rules[$provider.rule]
    try {
        if ($provider.registry) {
            $item = Get-ItemProperty -LiteralPath $provider.registry -Name $provider.value -ErrorAction SilentlyContinue
            $value = if ($null -ne $item) { [string]$item.($provider.value) } else { '' }
            # a location finding: fingerprinted, never shown (not even its first characters)
            if ($value) { Add-Finding $rule ('{0}\{1}' -f $provider.registry, $provider.value) $null $Utf8.GetBytes($value) $false '' $null }
        } elseif ($provider.certstore) {
            foreach ($cert in @(Get-ChildItem -LiteralPath ('Cert:\' + $provider.certstore) -ErrorAction SilentlyContinue)) {
                if (-not $cert.HasPrivateKey) { continue }
                $path = 'Cert:\{0}\{1}' -f $provider.certstore, $cert.Thumbprint
                $material = $Utf8.GetBytes(('location{0}{1}{0}{2}{0}{3}' -f [char]0, $rule.id, $path, $cert.Thumbprint))
                Add-Finding $rule $path $null $material $false ('subject={0}' -f $cert.Subject) $null
            }
        }
    } catch { if ($Errors.Count -lt 50) { $Errors.Add('cannot read {0}: {1}' -f $rule.id, $_.Exception.GetType().Name) } }
}

# --- PowerShell script block logging (event 4104): content rules on each recorded script --------
if ($GrepRules.Count -and -not (Test-Expired)) {
    $log = 'Microsoft-Windows-PowerShell/Operational'
    foreach ($record in @(Get-WinEvent -FilterHashtable @{ LogName = $log; Id = 4104 } -MaxEvents 5000 -ErrorAction SilentlyContinue)) {
        $text = [string]$record.Message
        if ($AnyContent.IsMatch($text)) { Test-Lines $GrepRules ('EventLog:\{0}\4104\{1}' -f $log, $record.RecordId) ($text -split "\r?\n") }
    }
}

$Stats.elapsed = [Math]::Round($Clock.Elapsed.TotalSeconds, 3)
$Result = [ordered]@{ schema = 1; complete = $script:Complete; findings = @($Findings.Values); stats = $Stats; errors = @($Errors) }
[Console]::Out.Write(($Result | ConvertTo-Json -Depth 6 -Compress))
[Console]::Out.Write("`n")
