# imageready sensitive-data scan for Windows (PowerShell 5.1, .NET enumeration, read-only).
#
# The engine embeds the configuration (rules, compiled path patterns, the HMAC key) below; the
# script travels over stdin, never on a command line. It finds the Azure resource (temporary)
# disk by where Azure attaches it (LUN 1 of the first synthetic SCSI controller, or the VMBus
# device 00000000-0001-...: the ids of WALinuxAgent's 66-azure-storage.rules), never by a label
# or a file, and walks every other volume by its mount points (drive letters and folders) with
# [IO.DirectoryInfo]::EnumerateFileSystemInfos (one try/catch per directory; junctions and
# symbolic links followed for location rules only), reads every file whose content is text
# (binary by its bytes, not its extension; UTF-16 decoded; gzip and zip expanded up to a bound;
# large files in chunks) and applies the content rules with [regex], reads the registry values
# and certificate stores the rules name, and the PowerShell script block log. What it cannot
# read in full is listed as not scanned with the reason. It writes nothing. Values never leave in clear: rule, path, line, length, at most the first 4
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
$MaxExpanded = [long]$Config.max_expanded
$Limit = [int]$Config.not_scanned_limit
# files read whole up to this size; larger ones are read line by line (a StreamReader)
$WholeFile = 64MB
$KeyLine = [regex]::new('^[ \t"''+]*(?:([A-Za-z0-9+/=]+)|[A-Za-z-]+: [^"'']*)?[ \t"'',+;]*(?:\\n)?[ \t"'',+;]*\r?$', $Exact)

$Findings = New-Object 'System.Collections.Generic.Dictionary[string,object]'
$Errors = New-Object 'System.Collections.Generic.List[string]'
$Stats = [ordered]@{ engine = 'powershell'; files = 0; dirs = 0; bytes = [long]0; content_files = 0
    content_bytes = [long]0; skipped_large = 0; skipped_large_paths = @(); excluded_paths = @()
    suppressed_examples = 0; suppressed_package_files = 0; candidate_lines = 0; volumes = @()
    symlinks_resolved = 0 }
$NotScanned = New-Object 'System.Collections.Specialized.OrderedDictionary'
$script:NotScannedTotal = 0
$Excluded = New-Object 'System.Collections.Generic.List[object]'
$EscapedBreak = [regex]::new('(\\+r)?\\+n|\\+u000[aAdD]|\\+r', $Exact)
$script:Complete = $true
$script:NextProgress = 2.0

function Test-Expired {
    if ($Clock.Elapsed.TotalSeconds -ge $Budget) {
        if ($script:Complete) { $Errors.Add('deadline passed: scan stopped early') }
        $script:Complete = $false
    }
    return -not $script:Complete
}

function Add-NotScanned([string]$Path, [string]$Reason) {
    # not read in full: listed (up to the limit) and counted, never dropped in silence
    if ($NotScanned.Contains($Path)) { return }
    $script:NotScannedTotal++
    if ($NotScanned.Count -lt $Limit) { $NotScanned[$Path] = $Reason }
}

function Get-Why($ErrorRecord) {
    $exception = $ErrorRecord.Exception
    while ($exception.InnerException) { $exception = $exception.InnerException }
    if ($exception -is [UnauthorizedAccessException]) { return 'permission denied' }
    return ('I/O error: {0}' -f $exception.GetType().Name)
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
$GrepRules = @($Rules | Where-Object { $_.mode -eq 'grep' -and -not $_.multiline })
$WideRules = @($Rules | Where-Object { $_.mode -eq 'grep' -and $_.multiline })
$AnyContent = $null
$ContentRules = @($GrepRules) + @($WideRules)
if ($ContentRules.Count) { $AnyContent = [regex]::new((($ContentRules | ForEach-Object { '(' + $_.ere + ')' }) -join '|'), $Exact) }
$Ancestors = @($Config.globs | Where-Object { $_.ancestors_re } | ForEach-Object { '(' + $_.ancestors_re + ')' })
$AncestorRx = $null
if ($Ancestors.Count) { $AncestorRx = [regex]::new(($Ancestors -join '|').Replace('@SYSDRIVE@', $SysDrive), $CaseFree) }
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

function Get-Secret($Rule, $Match) {
    # the rule's group, or the first of its groups that took part in the match
    foreach ($g in @($Rule.group)) { if ($Match.Groups[[int]$g].Success) { return $Match.Groups[[int]$g].Value } }
    return ''
}

function Get-Unescaped([string]$Text) {
    # escaped line breaks (JSON, JSON in JSON, \u000a) as line breaks, escaped base64 characters as themselves
    if (-not $Text.Contains('\')) { return $Text }
    $Text = $EscapedBreak.Replace($Text, "`n")
    return $Text.Replace('\/', '/').Replace('\u002b', '+').Replace('\u002B', '+').Replace('\u003d', '=').Replace('\u003D', '=')
}

function Test-Value($Rule, [string]$Value) {
    if ($null -ne $Rule.ignore_rx -and $Rule.ignore_rx.IsMatch($Value)) { return $false }
    foreach ($example in @($Config.examples)) {
        if ($Value.Contains($example)) { $Stats.suppressed_examples++; return $false }
    }
    if ($Rule.decode -eq 'unattend-password') {
        try { $text = [Text.Encoding]::Unicode.GetString([Convert]::FromBase64String($Value)) } catch { return $false }
        return ($text.EndsWith('Password') -and $text.Length -gt 8)
    }
    if ($Rule.decode -eq 'basic-auth') {
        try { $text = (New-Object Text.UTF8Encoding -ArgumentList $false, $true).GetString([Convert]::FromBase64String($Value)) } catch { return $false }
        $colon = $text.IndexOf(':')
        return ($colon -gt 0 -and $colon -lt $text.Length - 1 -and $text -notmatch '[\x00-\x1f\x7f]')
    }
    return $true
}

function Get-BlockBody([string[]]$Lines, [int]$Index, [string]$Rest, [string]$End) {
    # key material between a BEGIN header and its END marker, or $null (a header in code, say)
    $parts = New-Object 'System.Collections.Generic.List[string]'
    $Rest = Get-Unescaped $Rest
    if ($Rest.Contains($End)) {
        $parts.AddRange([string[]]($Rest.Substring(0, $Rest.IndexOf($End)) -split "`n"))
    } else {
        $parts.AddRange([string[]]($Rest -split "`n"))
        $found = $false
        for ($j = $Index + 1; $j -lt [Math]::Min($Lines.Count, $Index + 401); $j++) {
            $line = Get-Unescaped $Lines[$j]
            if ($line.Contains($End)) { $parts.AddRange([string[]]($line.Substring(0, $line.IndexOf($End)) -split "`n")); $found = $true; break }
            foreach ($piece in ($line -split "`n")) { if (-not $KeyLine.IsMatch($piece)) { return $null } }
            $parts.AddRange([string[]]($line -split "`n"))
        }
        if (-not $found) { return $null }
    }
    $body = New-Object Text.StringBuilder
    foreach ($part in $parts) {
        $m = $KeyLine.Match($part)
        if (-not $m.Success) { return $null }
        [void]$body.Append($m.Groups[1].Value)
    }
    if ($body.Length -lt 64) { return $null }
    return $body.ToString()
}

function Test-Lines($RuleSet, [string]$Path, [string[]]$Lines, [int]$Offset = 0) {
    for ($i = 0; $i -lt $Lines.Count; $i++) {
        $line = $Lines[$i]
        foreach ($rule in $RuleSet) {
            foreach ($m in $rule.rx.Matches($line)) {
                $value = Get-Secret $rule $m
                if ($rule.block_end) {
                    $value = Get-BlockBody $Lines $i $line.Substring($m.Index + $m.Length) $rule.block_end
                    if ($null -eq $value) { continue }
                }
                if (-not (Test-Value $rule $value)) { continue }
                $detail = ''
                if ($rule.detail_group) { $detail = '{0}={1}' -f $rule.detail_label, $m.Groups[[int]$rule.detail_group].Value }
                Add-Finding $rule $Path ($Offset + $i + 1) $Utf8.GetBytes($value) $true $detail $null
            }
        }
    }
}

function Test-Wide([string]$Path, [string[]]$Lines, [int]$Offset = 0) {
    # multi-line rules: line breaks read as spaces
    $starts = New-Object 'System.Collections.Generic.List[int]'
    $builder = New-Object Text.StringBuilder
    foreach ($line in $Lines) {
        $starts.Add($builder.Length)
        [void]$builder.Append($line.TrimEnd("`r")).Append(' ')
    }
    $text = $builder.ToString()
    foreach ($rule in $WideRules) {
        foreach ($m in $rule.rx.Matches($text)) {
            $number = 0
            foreach ($start in $starts) { if ($start -le $m.Index) { $number++ } }
            $value = Get-Secret $rule $m
            if (Test-Value $rule $value) { Add-Finding $rule $Path ($Offset + $number) $Utf8.GetBytes($value) $true '' $null }
        }
    }
}

function Get-Kind([byte[]]$Head, [int]$Count) {
    # text, utf-16-le/-be, utf-32, binary, gzip or zip: by the bytes, never by the extension
    if ($Count -ge 3 -and $Head[0] -eq 0x1F -and $Head[1] -eq 0x8B -and $Head[2] -eq 8) { return 'gzip' }
    if ($Count -ge 4 -and $Head[0] -eq 0x50 -and $Head[1] -eq 0x4B -and $Head[2] -eq 3 -and $Head[3] -eq 4) { return 'zip' }
    if ($Count -ge 4 -and (($Head[0] -eq 0xFF -and $Head[1] -eq 0xFE -and $Head[2] -eq 0 -and $Head[3] -eq 0) -or
            ($Head[0] -eq 0 -and $Head[1] -eq 0 -and $Head[2] -eq 0xFE -and $Head[3] -eq 0xFF))) { return 'utf-32' }
    if ($Count -ge 2 -and $Head[0] -eq 0xFF -and $Head[1] -eq 0xFE) { return 'utf-16-le' }
    if ($Count -ge 2 -and $Head[0] -eq 0xFE -and $Head[1] -eq 0xFF) { return 'utf-16-be' }
    if ($Count -eq 0 -or [Array]::IndexOf($Head, [byte]0, 0, $Count) -lt 0) { return 'text' }
    # UTF-16 without a byte order mark: every other byte NUL
    $n = [Math]::Min($Count - ($Count % 2), 4096)
    $evenZero = 0
    $oddZero = 0
    for ($k = 0; $k -lt $n; $k += 2) {
        if ($Head[$k] -eq 0) { $evenZero++ }
        if ($Head[$k + 1] -eq 0) { $oddZero++ }
    }
    $half = $n / 2
    if ($n -ge 8 -and $oddZero -ge $half * 0.9 -and $evenZero -lt $half * 0.1) { return 'utf-16-le' }
    if ($n -ge 8 -and $evenZero -ge $half * 0.9 -and $oddZero -lt $half * 0.1) { return 'utf-16-be' }
    return 'binary'
}

function Get-TextEncoding([string]$Kind) {
    if ($Kind -eq 'utf-16-le') { return [Text.Encoding]::Unicode }
    if ($Kind -eq 'utf-16-be') { return [Text.Encoding]::BigEndianUnicode }
    return $Utf8
}

function Test-Text([string]$Path, [string]$Text) {
    if ($null -eq $AnyContent -or -not $AnyContent.IsMatch($Text)) { return }
    $lines = $Text -split "\r?\n"
    $Stats.candidate_lines += $lines.Count
    Test-Lines $GrepRules $Path $lines
    if ($WideRules.Count) { Test-Wide $Path $lines }
}

function Test-Bytes([string]$Path, [byte[]]$Bytes) {
    # a file's or an archive member's bytes: text decoded and scanned, archives expanded
    $kind = Get-Kind $Bytes ([Math]::Min($Bytes.Length, 8192))
    $lower = $Path.ToLowerInvariant()
    if ($kind -eq 'gzip' -or ($kind -eq 'zip' -and $lower.EndsWith('.zip'))) { Test-Archive $Path $Bytes $kind; return }
    if ($kind -eq 'binary' -and ($lower -match '\.(xz|txz|bz2|tbz2?)$')) {
        Add-NotScanned $Path 'compressed (xz or bzip2): Windows PowerShell has no decoder for it'
        return
    }
    if ($kind -eq 'utf-32') { Add-NotScanned $Path 'unsupported encoding (UTF-32 text)'; return }
    if ($kind -ne 'text' -and -not $kind.StartsWith('utf-16')) { return }
    $Stats.content_files++
    $Stats.content_bytes += $Bytes.Length
    $reader = New-Object IO.StreamReader -ArgumentList (New-Object IO.MemoryStream -ArgumentList (, $Bytes)), (Get-TextEncoding $kind), $true
    try { $text = $reader.ReadToEnd() } finally { $reader.Dispose() }
    Test-Text $Path $text.TrimStart([char]0xFEFF)
}

function Test-Archive([string]$Path, [byte[]]$Bytes, [string]$Kind) {
    # gzip and zip up to $MaxExpanded bytes expanded (.NET has no tar, xz or bzip2 reader here)
    try {
        if ($Kind -eq 'gzip') {
            $gzip = New-Object IO.Compression.GZipStream -ArgumentList (New-Object IO.MemoryStream -ArgumentList (, $Bytes)), ([IO.Compression.CompressionMode]::Decompress)
            $expanded = New-Object IO.MemoryStream
            try {
                $buffer = New-Object byte[] 65536
                while (($read = $gzip.Read($buffer, 0, $buffer.Length)) -gt 0) {
                    $expanded.Write($buffer, 0, $read)
                    if ($expanded.Length -gt $MaxExpanded) { Add-NotScanned $Path ('expands beyond the {0} bytes bound' -f $MaxExpanded); return }
                }
            } finally { $gzip.Dispose() }
            $data = $expanded.ToArray()
            if ($data.Length -ge 262 -and [Text.Encoding]::ASCII.GetString($data, 257, 5) -eq 'ustar') {
                Add-NotScanned $Path 'tar archive: Windows PowerShell has no reader for it'
                return
            }
            Test-Bytes $Path $data
            return
        }
        $zip = New-Object IO.Compression.ZipArchive -ArgumentList (New-Object IO.MemoryStream -ArgumentList (, $Bytes)), ([IO.Compression.ZipArchiveMode]::Read)
        try {
            $budget = $MaxExpanded
            foreach ($entry in $zip.Entries) {
                if ($entry.FullName.EndsWith('/')) { continue }
                $member = '{0}!\{1}' -f $Path, $entry.FullName.Replace('/', '\')
                if ($entry.Length -gt $budget) { Add-NotScanned $Path ('expands beyond the {0} bytes bound' -f $MaxExpanded); return }
                $budget -= $entry.Length
                $stream = $entry.Open()
                $copy = New-Object IO.MemoryStream
                try { $stream.CopyTo($copy) } finally { $stream.Dispose() }
                $inner = $copy.ToArray()
                $innerKind = Get-Kind $inner ([Math]::Min($inner.Length, 8192))
                if ($innerKind -eq 'gzip' -or $innerKind -eq 'zip') { Add-NotScanned $member 'an archive inside an archive'; continue }
                Test-Bytes $member $inner
            }
        } finally { $zip.Dispose() }
    } catch {
        # compressed by its first bytes only, and not after all: a binary file
        if ($Path -notmatch '\.(gz|tgz|zip)$') { return }
        Add-NotScanned $Path ('cannot decompress ({0})' -f $_.Exception.GetType().Name)
    }
}

function Test-LargeFile([string]$Path, $RuleSet, [switch]$Wide) {
    # past $WholeFile bytes: line by line, in windows of 4096 lines that overlap by 400 (a key
    # block spans at most that; findings seen twice are the same finding)
    $head = New-Object byte[] 8192
    $file = [IO.File]::OpenRead($Path)
    try { $count = $file.Read($head, 0, $head.Length) } finally { $file.Dispose() }
    $kind = Get-Kind $head $count
    if ($kind -eq 'utf-32') { Add-NotScanned $Path 'unsupported encoding (UTF-32 text)'; return }
    if ($kind -eq 'gzip' -or $kind -eq 'zip') { Add-NotScanned $Path ('compressed and larger than {0} bytes' -f $WholeFile); return }
    if ($kind -ne 'text' -and -not $kind.StartsWith('utf-16')) { return }
    $Stats.content_files++
    $reader = New-Object IO.StreamReader -ArgumentList $Path, (Get-TextEncoding $kind), $true
    try {
        $window = New-Object 'System.Collections.Generic.List[string]'
        $offset = 0
        $done = $false
        while (-not $done) {
            $line = $reader.ReadLine()
            if ($null -eq $line) { $done = $true } else { $window.Add($line) }
            if ($window.Count -ge 4096 -or ($done -and $window.Count)) {
                $lines = $window.ToArray()
                Test-Lines $RuleSet $Path $lines $offset
                if ($Wide -and $WideRules.Count) { Test-Wide $Path $lines $offset }
                if (Test-Expired) { return }
                $keep = [Math]::Min(400, $window.Count)
                $offset += $window.Count - $keep
                $window.RemoveRange(0, $window.Count - $keep)
                if ($done) { break }
            }
        }
    } finally { $reader.Dispose() }
}

function Test-File([string]$Path, [long]$Size) {
    if ($Size -gt $MaxSize) {
        $Stats.skipped_large++
        Add-NotScanned $Path ('larger than the {0} bytes bound ({1} bytes)' -f $MaxSize, $Size)
        return
    }
    if ($Size -eq 0) { return }
    if ($Size -gt $WholeFile) { Test-LargeFile $Path $GrepRules -Wide; return }
    Test-Bytes $Path ([IO.File]::ReadAllBytes($Path))
}

function Find-PathRule([string]$Path, [string]$Name, [long]$Size, $Active, [string]$Detail = '') {
    $hits = New-Object 'System.Collections.Generic.List[object]'
    $named = $ByName[$Name.ToLowerInvariant()]
    if ($null -ne $named) { foreach ($g in $named) { if ($g.path.IsMatch($Path)) { $hits.Add($g.rule) } } }
    foreach ($g in $ByPattern) { if ($g.name.IsMatch($Name) -and $g.path.IsMatch($Path)) { $hits.Add($g.rule) } }
    foreach ($d in $Active) { $hits.Add($d.rule) }
    foreach ($rule in $hits) {
        if ($null -eq $rule.excl_rx -or -not $rule.excl_rx.IsMatch($Path)) { $PathHits.Add(@($rule, $Path, $Size, $Detail)) }
    }
    return $hits.Count
}

function Get-ActiveDirRules([string]$Path, $Inherited) {
    $active = @($Inherited | Where-Object { $_.recursive })
    foreach ($d in $ByDir) { if ($active -notcontains $d -and $d.rx.IsMatch($Path)) { $active += $d } }
    return , $active
}

function Get-RulesAt([string]$Directory) {
    # the directory rules in force in $Directory, recursive ones of its ancestors too
    $active = @()
    $parts = $Directory.TrimEnd('\').Split('\')
    for ($k = 1; $k -le $parts.Count; $k++) { $active = Get-ActiveDirRules ($parts[0..($k - 1)] -join '\') $active }
    return , $active
}

function Get-LinkTarget([string]$Path) {
    # a junction's or symbolic link's target; $null for a volume mount point (walked as its own root)
    $item = Get-Item -LiteralPath $Path -Force -ErrorAction SilentlyContinue
    if ($null -eq $item -or -not $item.LinkType) { return $null }
    $target = [string](@($item.Target)[0])
    if ($target -match '^(\\\\\?\\|\\\?\?\\)?Volume\{') { return $null }
    if (-not [IO.Path]::IsPathRooted($target)) { $target = [IO.Path]::GetFullPath((Join-Path (Split-Path $Path) $target)) }
    return $target
}

function Trace-Link([string]$Path) {
    # location rules see what a link shows (its content is scanned where it really is)
    $target = Get-LinkTarget $Path
    if ($null -eq $target) { return }
    if ([IO.File]::Exists($target)) {
        $size = (New-Object IO.FileInfo -ArgumentList $target).Length
        $name = Split-Path $Path -Leaf
        if (Find-PathRule $Path $name $size (Get-RulesAt (Split-Path $Path)) ('symlink to {0}' -f $target)) { $Stats.symlinks_resolved++ }
        return
    }
    if (-not [IO.Directory]::Exists($target) -or $null -eq $AncestorRx -or -not $AncestorRx.IsMatch($Path)) { return }
    $Stats.symlinks_resolved++
    $detail = 'via symlink {0} -> {1}' -f $Path, $target
    $seen = 0
    $stack = New-Object 'System.Collections.Generic.Stack[object]'
    $stack.Push(@($Path, (Get-RulesAt $Path)))
    while ($stack.Count -gt 0) {
        $directory, $active = $stack.Pop()
        try { $entries = @((New-Object IO.DirectoryInfo -ArgumentList $directory).EnumerateFileSystemInfos()) }
        catch { Add-NotScanned $directory ('cannot list ({0}): {1}' -f $detail, (Get-Why $_)); continue }
        $seen += $entries.Count
        if ($seen -gt 100000) { Add-NotScanned $Path ('{0} holds more than 100,000 entries; location rules not applied through the link' -f $detail); return }
        foreach ($entry in $entries) {
            if ($entry.Attributes -band [IO.FileAttributes]::ReparsePoint) { continue }
            if ($entry.Attributes -band [IO.FileAttributes]::Directory) { $stack.Push(@($entry.FullName, (Get-ActiveDirRules $entry.FullName $active))) }
            else { [void](Find-PathRule $entry.FullName $entry.Name $entry.Length $active $detail) }
        }
    }
}

# --- disks and volumes: the resource disk by where Azure attaches it, never by a file or a label --
Add-Type -AssemblyName System.IO.Compression
$ResourceDisks = @{}
foreach ($drive in @(Get-CimInstance -ClassName Win32_DiskDrive -ErrorAction SilentlyContinue)) {
    $parent = ''
    try { $parent = [string](Get-PnpDeviceProperty -InstanceId $drive.PNPDeviceID -KeyName 'DEVPKEY_Device_Parent' -ErrorAction Stop).Data } catch { $parent = '' }
    $lower = $parent.ToLowerInvariant()
    if ($lower.Contains('{00000000-0001-')) {
        $ResourceDisks[[int]$drive.Index] = 'VMBus device ' + $lower.Substring($lower.LastIndexOf('\') + 1)
    } elseif ($lower.Contains('{f8b3781a-1e82-4818-a1c3-63d806ec15bb}') -and [int]$drive.SCSILogicalUnit -eq 1) {
        $ResourceDisks[[int]$drive.Index] = 'LUN 1 of SCSI controller {f8b3781a-1e82-4818-a1c3-63d806ec15bb}'
    }
}
$Roots = New-Object 'System.Collections.Generic.List[string]'
$partitions = @(Get-Partition -ErrorAction SilentlyContinue)
foreach ($partition in $partitions) {
    $mounts = @($partition.AccessPaths | Where-Object { $_ -and -not $_.StartsWith('\\?\') })
    $guids = @($partition.AccessPaths | Where-Object { $_ -and $_.StartsWith('\\?\Volume{') })
    if (-not $mounts.Count -and -not $guids.Count) { continue }  # no file system (the reserved partition)
    # a volume without a drive letter or folder (EFI, recovery) is walked by its volume path
    $root = if ($mounts.Count) { $mounts[0] } else { $guids[0] }
    $Stats.volumes += [ordered]@{ mount = $root; disk = [int]$partition.DiskNumber }
    if ($ResourceDisks.ContainsKey([int]$partition.DiskNumber)) {
        $why = 'the Azure resource disk (disk {0}, {1}): not part of the image' -f $partition.DiskNumber, $ResourceDisks[[int]$partition.DiskNumber]
        foreach ($mount in @($mounts) + @($guids)) { $Excluded.Add([ordered]@{ path = $mount; reason = $why }) }
        continue
    }
    $Roots.Add($root)
}
if (-not $partitions.Count) {
    $Errors.Add('no partitions listed (Get-Partition): which volume is the resource disk is unknown')
    $script:Complete = $false
}

# --- walk ----------------------------------------------------------------------------------------
foreach ($root in $Roots) {
    $stack = New-Object 'System.Collections.Generic.Stack[object]'
    $stack.Push(@((New-Object IO.DirectoryInfo -ArgumentList $root), (Get-ActiveDirRules $root.TrimEnd('\') @())))
    while ($stack.Count -gt 0 -and -not (Test-Expired)) {
        $directory, $active = $stack.Pop()
        $Stats.dirs++
        try { $entries = @($directory.EnumerateFileSystemInfos()) }
        catch { Add-NotScanned $directory.FullName ('cannot list: {0}' -f (Get-Why $_)); continue }
        foreach ($entry in $entries) {
            $attributes = $entry.Attributes
            $path = $entry.FullName
            if ($attributes -band [IO.FileAttributes]::ReparsePoint) {
                try { Trace-Link $path } catch { Add-NotScanned $path ('cannot resolve the link: {0}' -f (Get-Why $_)) }
                continue
            }
            if ($attributes -band [IO.FileAttributes]::Directory) {
                if ($SkipDirs -notcontains $path.ToLowerInvariant()) { $stack.Push(@($entry, (Get-ActiveDirRules $path $active))) }
                continue
            }
            $size = $entry.Length
            $Stats.files++
            $Stats.bytes += $size
            [void](Find-PathRule $path $entry.Name $size $active)
            try { Test-File $path $size } catch { Add-NotScanned $path (Get-Why $_) }
        }
        Write-ScanProgress 'walk'
    }
}

# --- rules scoped to paths: presence, or a pattern in those files --------------------------------
foreach ($hit in $PathHits) {
    if (Test-Expired) { break }
    $rule, $path, $size, $detail = $hit
    try {
        if ($rule.mode -eq 'presence') {
            if ($size -lt 1) { continue }
            $digest = 'size:{0}' -f $size
            if ($size -le $MaxSize) {
                $file = [IO.File]::OpenRead($path)
                try { $digest = (($Sha.ComputeHash($file) | ForEach-Object { $_.ToString('x2') }) -join '') } finally { $file.Dispose() }
            }
            $material = $Utf8.GetBytes(('location{0}{1}{0}{2}{0}{3}' -f [char]0, $rule.id, $path, $digest))
            Add-Finding $rule $path $null $material $false $detail $size
        } elseif ($size -le $MaxSize) {
            Test-LargeFile $path @($rule)
        }
    } catch { Add-NotScanned $path (Get-Why $_) }
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
$Stats.excluded_paths = @($Excluded | ForEach-Object { $_.path })
$Stats.skipped_large_paths = @($NotScanned.Keys | Where-Object { ([string]$NotScanned[$_]).StartsWith('larger than') } | Select-Object -First 20)
$Unread = @($NotScanned.Keys | ForEach-Object { [ordered]@{ path = $_; reason = $NotScanned[$_] } })
$Result = [ordered]@{ schema = 1; complete = $script:Complete; findings = @($Findings.Values); stats = $Stats
    errors = @($Errors); not_scanned = $Unread; not_scanned_total = $script:NotScannedTotal; excluded = @($Excluded) }
[Console]::Out.Write(($Result | ConvertTo-Json -Depth 6 -Compress))
[Console]::Out.Write("`n")
