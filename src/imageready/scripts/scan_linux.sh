# imageready sensitive-data scan: the POSIX sh fallback for guests without python3.
#
# Runs after the engine's head (IMAGEREADY_T0, the python3 check) as `sh -c`. Reads the '#SH'
# configuration lines of scan_linux.py's stdin (the HMAC key among them: stdin only, never argv),
# uses only find, grep -E, sed, awk, sha256sum, md5sum, base64, wc, tr and xargs, and prints one
# JSON document like scan_linux.py (stats.engine "sh"). It writes nothing: no here-documents
# (bash backs them with temporary files) and every value travels through pipes only. Values
# never leave in clear: rule, path, line, length, at most 4 leading characters, HMAC-SHA256.
# Nothing is skipped in silence: what it cannot read (too large, unreadable, UTF-16 or UTF-32
# text, zip and tar archives, directories a mount hides, a compressor it lacks) is listed as
# not scanned, with the reason, and keeps the scan incomplete.
# Limits: file names containing a newline are skipped; much slower than the python3 engine; it
# reads beneath a mount only through a second mount of the disk (it never mounts anything).
set -u -f
export LC_ALL=C
cfg=$(sed -n 's/^#SH //p')
nl='
'
IFS=$nl
soh=$(printf '\001')

field() { printf '%s\n' "$cfg" | sed -n "s/^$1 //p"; }
now() { date +%s; }
json() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\011' ' ' | tr -d '\000-\037'; }
progress() { echo "PROGRESS phase=$1 files=${nfiles:-0} elapsed=$(($(now) - t0))s" >&2; }
err() { errors="$errors${errors:+,}\"$(json "$1")\""; }
skip() {  # path reason: not read in full, listed (up to the limit), never dropped in silence
    case "$listed" in *"$nl$1$nl"*) return ;; esac
    listed="$listed$1$nl"
    nskipped=$((nskipped + 1))
    [ "$nskipped" -le "$limit" ] &&
        not_scanned="$not_scanned${not_scanned:+,}{\"path\":\"$(json "$1")\",\"reason\":\"$(json "$2")\"}"
}
exclude() { excluded_json="$excluded_json${excluded_json:+,}{\"path\":\"$(json "$1")\",\"reason\":\"$(json "$2")\"}"; }
expired() {
    if [ "$(now)" -ge "$deadline" ]; then
        [ "$complete" = true ] && err "deadline passed: scan stopped early"
        complete=false
        return 0
    fi
    return 1
}
limited() {  # run a command under the deadline where timeout(1) exists
    if command -v timeout >/dev/null 2>&1; then
        left=$((deadline - $(now)))
        timeout "$((left > 0 ? left : 1))" "$@"
    else
        "$@"
    fi
}

key=$(field key)
root=$(field root)
prefix=${root%/}
maxsize=$(field maxsize)
maxexp=$(field maxexp)
limit=$(field limit)
not_scanned=""
nskipped=0
excluded_json=""
listed="$nl"
t0=${IMAGEREADY_T0:-$(now)}
deadline=$((t0 + $(field budget)))
complete=true
errors=""
findings=""
checked="|"
suppressed_pkg=0
suppressed_examples=0
examples=$(field example)

# --- HMAC-SHA256 with sha256sum: H((K^opad) || H((K^ipad) || m)); pads as printf escapes -------
pads=$(printf '%s\n' "$key" | awk '
function xor(a, b,   r, bit) { r = 0; bit = 1
    while (a > 0 || b > 0) { if ((a % 2) != (b % 2)) r += bit; a = int(a / 2); b = int(b / 2); bit *= 2 }
    return r }
{ hex = "0123456789abcdef"; is = ""; os = ""
  for (i = 0; i < 64; i++) { byte = 0
      if (2 * i < length($0)) byte = (index(hex, substr($0, 2*i+1, 1)) - 1) * 16 + index(hex, substr($0, 2*i+2, 1)) - 1
      is = is sprintf("\\%03o", xor(byte, 54)); os = os sprintf("\\%03o", xor(byte, 92)) }
  print is; print os }')
ipad=${pads%%"$nl"*}
opad=${pads#*"$nl"}
hmac() {  # the message on stdin; prints 16 hex characters
    inner=$({ printf "$ipad"; cat; } | sha256sum | cut -c1-64)
    octal=$(printf '%s\n' "$inner" | awk '{ hex = "0123456789abcdef"
        for (i = 1; i < length($0); i += 2)
            printf "\\%03o", (index(hex, substr($0, i, 1)) - 1) * 16 + index(hex, substr($0, i+1, 1)) - 1 }')
    { printf "$opad"; printf "$octal"; } | sha256sum | cut -c1-16
}

# --- precision: a file owned by a package and unchanged is not a finding ------------------------
package_unchanged() {
    case "$checked" in *"|+$1|"*) return 0 ;; *"|-$1|"*) return 1 ;; esac
    sum=""
    if [ -d "$prefix/var/lib/dpkg/info" ]; then
        set +f  # the one glob of this script
        sum=$(cat "$prefix"/var/lib/dpkg/info/*.md5sums 2>/dev/null | awk -v p="${1#/}" '
            { s = $1; sub(/^[0-9a-f]+  /, "") } $0 == p { print s; exit }')
        set -f
        [ -n "$sum" ] || sum=$(awk -v p="$1" '$1 == p && NF == 2 && length($2) == 32 { print $2; exit }' \
            "$prefix/var/lib/dpkg/status" 2>/dev/null)
    fi
    if [ -n "$sum" ] && [ "$(md5sum < "$prefix$1" | cut -c1-32)" = "$sum" ]; then
        checked="$checked+$1|"
        return 0
    fi
    checked="$checked-$1|"
    return 1
}

add() {  # rule path line fingerprint length prefix detail
    if package_unchanged "$2"; then
        suppressed_pkg=$((suppressed_pkg + 1))
        return
    fi
    findings="$findings${findings:+,}{\"rule\":\"$1\",\"path\":\"$(json "$2")\",\"line\":${3:-null},\"length\":$5,\"prefix\":\"$(json "$6")\",\"fp\":\"$4\",\"detail\":\"$(json "$7")\"}"
}

accept() {  # rule index, value: true when the value is a finding
    ign=$(field "ignore $1")
    if [ -n "$ign" ] && printf '%s\n' "$2" | grep -qxE -e "$ign"; then return 1; fi
    for ex in $examples; do
        case "$2" in *"$ex"*) suppressed_examples=$((suppressed_examples + 1)); return 1 ;; esac
    done
    if [ "$decode" = unattend-password ]; then
        text=$(printf '%s' "$2" | base64 -d 2>/dev/null | tr -d '\000')
        case "$text" in ?*Password) return 0 ;; *) return 1 ;; esac
    fi
    if [ "$decode" = basic-auth ]; then
        text=$(printf '%s' "$2" | base64 -d 2>/dev/null) || return 1
        printf '%s' "$text" | grep -q '[^ -~]' && return 1
        case "$text" in ?*:?*) return 0 ;; *) return 1 ;; esac
    fi
    return 0
}

block_body() {  # path line: the key material after a BEGIN header, or nothing ($reader reads)
    $reader "$prefix$1" | awk -v n="$2" '
        NR == n { rest = $0; sub(/.*-----BEGIN [^-]*-----/, "", rest)
                  if (index(rest, "-----END")) { rest = substr(rest, 1, index(rest, "-----END") - 1); done = 1 }
                  body = rest; next }
        NR > n && !done { if (index($0, "-----END")) { body = body "\n" substr($0, 1, index($0, "-----END") - 1); done = 1; exit }
                  body = body "\n" $0; if (NR > n + 400) exit }
        END { if (!done) exit
              # escaped line breaks (JSON, JSON in JSON, \\u000a) and escaped base64 characters
              gsub(/(\\+r)?\\+n|\\+u000[aAdD]|\\+r/, "\n", body); gsub(/\\\//, "/", body)
              gsub(/\\u002[bB]/, "+", body); gsub(/\\u003[dD]/, "=", body)
              k = split(body, parts, "\n"); out = ""
              for (i = 1; i <= k; i++) { p = parts[i]
                  if (p ~ /^[ \t"'"'"'+]*[A-Za-z-]+: /) continue
                  # as the python engine: the longest base64 run, then only quotes, commas,
                  # concatenation and spaces (a "+" that ends a base64 line is key material)
                  sub(/^[ \t"'"'"'+]*/, "", p); match(p, /^[A-Za-z0-9+\/=]*/)
                  b = substr(p, 1, RLENGTH); r = substr(p, RLENGTH + 1)
                  if (r !~ /^[ \t"'"'"',+;\r]*$/) exit
                  out = out b }
              if (length(out) >= 64) print out }'
}

group_of() {  # text ere group[,group...]: the (first matching) group's text (grep -o printed one match)
    for g in $(printf '%s\n' "$3" | tr ',' '\n'); do
        # a marker before the group tells "took part, empty" from "did not take part"
        found=$(printf '%s\n' "$1" | sed -E -n "s$soh^($2)\$$soh=\\$((g + 1))${soh}p")
        case "$found" in =?*) printf '%s\n' "${found#=}"; return ;; esac
        case "$3" in *,*) ;; *) printf '%s\n' "${found#=}"; return ;; esac
    done
}

matches() {  # rule index, records "path<SOH>line:match", one per line
    ere=$(field "ere $1")
    for rec in $2; do
        path=${rec%%"$soh"*}
        rest=${rec#*"$soh"}
        lineno=${rest%%:*}
        text=${rest#*:}
        if [ "$block" = block ]; then
            value=$(block_body "$path" "$lineno")
            [ -n "$value" ] || continue
        else
            value=$(group_of "$text" "$ere" "$group")
        fi
        accept "$1" "$value" || continue
        detail=""
        [ "$dgroup" -gt 0 ] && detail="$label=$(group_of "$text" "$ere" "$dgroup")"
        shown=""
        [ ${#value} -ge 12 ] && shown=${value%"${value#????}"}
        add "$id" "$path" "$lineno" "$(printf '%s' "$value" | hmac)" ${#value} "$shown" "$detail"
        expired && return
    done
}

rule_info() {
    IFS=' '
    set -- $(field "rule $1")
    IFS=$nl
    id=$1 mode=$2 group=$3 dgroup=$4 label=$5 decode=$6 block=$7 multi=$8
}

# how block_body and multiline read a file: as it is, or through a decompressor
gz() { gzip -dc "$@"; }
xzd() { xz -dc "$@"; }
bz() { bzip2 -dc "$@"; }

# --- mounts: what is on a disk of the image, from /proc/self/mountinfo --------------------------
progress mounts
reader=cat
resource=" "
set +f  # the globs of this script
for link in "$prefix"/dev/disk/azure/resource "$prefix"/dev/disk/azure/resource-part*; do
    [ -b "$link" ] || continue
    dev=$(stat -L -c '%t %T' "$link" 2>/dev/null) || continue
    dev="$((0x${dev% *})):$((0x${dev#* }))"
    if [ -e "/sys/dev/block/$dev" ]; then  # sysfs, where there is one, must place it where Azure does
        if ! readlink -f "/sys/dev/block/$dev" | grep -qiE \
            '/00000000-0001-|/\{?f8b3781a-1e82-4818-a1c3-63d806ec15bb\}?/host[0-9]+/target[0-9:]+/[0-9]+:[0-9]+:[0-9]+:1/'; then
            err "${link#"$prefix"} names $dev, which sysfs does not place where Azure attaches the resource disk: scanned as a disk"
            continue
        fi
    fi
    resource="$resource$dev=${link#"$prefix"} "
done
set -f
# one record per mount under the scanned root: KIND<TAB>GUEST<TAB>REASON, and H<TAB>GUEST<TAB>FSTYPE<TAB>VIA
# for each directory a mount hides on a walked disk (VIA: the same place through a second mount)
mounts=$(awk -v prefix="$prefix" -v root="${root%/}/" -v fstypes=" $(field fstypes) " -v resource="$resource" '
    function decode(s) { gsub(/\\040/, " ", s); gsub(/\\011/, "\t", s); gsub(/\\134/, "\\", s); return s }
    { for (i = 7; i <= NF; i++) if ($i == "-") break
      n++; id[n] = $1; parent[n] = $2; dev[n] = $3; mroot[n] = decode($4); point[n] = decode($5)
      fstype[n] = $(i + 1); source[n] = decode($(i + 2)); byid[$1] = n
      p = point[n] == "/" ? "/" : point[n] "/"
      if (index(root, p) == 1 && (length(p) > best || (length(p) == best && $1 + 0 > topid + 0))) {
          best = length(p); top = n; topid = $1 } }
    END {
      for (m = 1; m <= n; m++) {
          if (m == top || (prefix == "" && point[m] == "/")) { kind[m] = "disk"; guest[m] = "/"
              if (!((dev[m], mroot[m]) in primary)) primary[dev[m], mroot[m]] = "/"; continue }
          if (prefix != "" && index(point[m], prefix "/") != 1) continue
          guest[m] = substr(point[m], length(prefix) + 1)
          first = ""
          for (key in primary) { split(key, kv, SUBSEP)
              if (kv[1] == dev[m] && (kv[2] == mroot[m] || index(mroot[m], (kv[2] == "/" ? "" : kv[2]) "/") == 1)) first = primary[key] }
          if (first != "") { kind[m] = "second"; why = "another mount of " source[m] " (walked at " first ")" }
          else if (index(fstypes, " " fstype[m] " ") || fstype[m] ~ /^fuse\./) {
              kind[m] = "pseudo"; why = fstype[m] " file system, not on a disk of the image" }
          else if (index(resource, " " dev[m] "=")) { kind[m] = "resource"; r = resource
              sub(".* " dev[m] "=", "", r); sub(/ .*/, "", r)
              why = "the Azure resource disk (" source[m] ", " r "): not part of the image" }
          else { kind[m] = "disk"; primary[dev[m], mroot[m]] = guest[m]; continue }
          printf "%s\t%s\t%s\n", kind[m], guest[m], why }
      for (m = 1; m <= n; m++) {
          q = byid[parent[m]]
          if (guest[m] == "" || guest[m] == "/" || q == "" || kind[q] != "disk" || guest[q] == "") continue
          rel = substr(point[m], length(point[q] == "/" ? "" : point[q]) + 1); via = ""
          for (o = 1; o <= n && via == ""; o++) {
              if (o == q || dev[o] != dev[q] || mroot[o] != mroot[q]) continue
              target = (point[o] == "/" ? "" : point[o]) rel; covered = 0
              for (c = 1; c <= n; c++) if (parent[c] == id[o] && point[c] == target) covered = 1
              if (!covered) via = target }
          printf "H\t%s\t%s\t%s\n", guest[m], fstype[m], via } }' /proc/self/mountinfo 2>/dev/null) ||
    { err "cannot read the mount table"; complete=false; }
excluded=""
for row in $mounts; do
    kind=${row%%"	"*}
    rest=${row#*"	"}
    case "$kind" in
    H)
        guest=${rest%%"	"*}
        rest=${rest#*"	"}
        fstype=${rest%%"	"*}
        via=${rest#*"	"}
        if [ -n "$via" ] && [ -d "$via" ] && [ -z "$(ls -A "$via" 2>/dev/null)" ]; then
            continue  # nothing on the disk beneath it
        fi
        if [ -n "$via" ]; then
            skip "$guest" "hidden under the $fstype mounted over it; the sh fallback does not read beneath mounts (install python3)"
        else
            skip "$guest" "hidden under the $fstype mounted over it; the disk beneath cannot be read (the sh fallback mounts nothing)"
        fi
        ;;
    *)
        guest=${rest%%"	"*}
        excluded="$excluded$guest$nl"
        exclude "$guest" "${rest#*"	"}"
        ;;
    esac
done

# --- inventory: every file of the walked disks, and the symlinks among them ---------------------
progress walk
set -- "$prefix/"
for dir in $excluded; do
    set -- "$@" -path "$prefix$dir" -prune -o
done
# one walk: over-size files tagged "L", symlinks "S", errors as find prints them ("find: ...")
listing=$(limited find "$@" \( -type f -size +"$maxsize"c -exec printf 'L%s\n' {} + \) -o \
    \( -type f -print \) -o \( -type l -exec printf 'S%s\n' {} + \) 2>&1)
expired
for line in $(printf '%s\n' "$listing" | grep '^find: '); do
    what=${line#find: ?}
    case "$what" in *"No such file"*) continue ;; esac
    path=${what%?: *}
    skip "${path#"$prefix"}" "cannot list: ${what##*: }"
done
listing=$(printf '%s\n' "$listing" | grep -v '^find: ' | awk -v n=${#prefix} '
    /^[LS]/ { print substr($0, 1, 1) substr($0, n + 2); next } { print substr($0, n + 1) }')
for path in $(printf '%s\n' "$listing" | sed -n 's/^L//p'); do
    skip "$path" "larger than the $maxsize bytes bound"
done
files=$(printf '%s\n' "$listing" | grep -v '^S' | sed 's/^L//')
links=$(printf '%s\n' "$listing" | sed -n 's/^S//p')
readable=$(printf '%s\n' "$listing" | grep -v '^[LS]')
compressed=$(printf '%s\n' "$readable" | grep -iE '\.(gz|tgz|xz|txz|bz2|tbz2?|zip)$')
text_files=$(printf '%s\n' "$readable" | grep -viE '\.(gz|tgz|xz|txz|bz2|tbz2?|zip)$')
nfiles=$(printf '%s\n' "$files" | grep -c .)
large=$(printf '%s\n' "$listing" | grep -c '^L')

homes="/root|/home/[^/]+"
while IFS=: read -r _ _ _ _ _ home _; do
    if [ -n "$home" ] && [ "$home" != / ] && [ -d "$prefix$home" ]; then
        homes="$homes|$(printf '%s' "$home" | sed 's/[].[^$*+?(){}|\\]/\\&/g')"
    fi
done < "$prefix/etc/passwd"
with_homes() {  # every @HOME@ of a path regex as the homes of this guest
    text=$1 out=""
    while :; do
        case "$text" in
        *@HOME@*) out="$out${text%%@HOME@*}($homes)" text=${text#*@HOME@} ;;
        *) break ;;
        esac
    done
    printf '%s\n' "$out$text"
}

resolve() {  # a guest path with every symlink in it followed (nothing when dangling or a loop)
    todo=${1#/} out="" hops=0
    while [ -n "$todo" ]; do
        part=${todo%%/*}
        case "$todo" in */*) todo=${todo#*/} ;; *) todo="" ;; esac
        case "$part" in "" | .) continue ;; ..) out=${out%/*}; continue ;; esac
        if [ -L "$prefix$out/$part" ]; then
            hops=$((hops + 1))
            [ "$hops" -gt 40 ] && return 1
            target=$(readlink "$prefix$out/$part")
            case "$target" in /*) out="" ;; esac
            todo="${target#/}${todo:+/$todo}"
        else
            out="$out/$part"
        fi
    done
    [ -e "$prefix${out:-/}" ] && printf '%s\n' "${out:-/}"
}
in_image() {
    for dir in $excluded; do
        case "$1" in "$dir" | "$dir"/*) return 1 ;; esac
    done
    return 0
}

# paths through symlinks that location rules may see: "LINKPATH<SOH>TARGETPATH<SOH>DETAIL"
ancestors=$(field anc | paste -sd '|' -)
globs=$(field glob | sed 's/^[0-9]* //' | paste -sd '|' -)
through=""
# only links some location rule could see (a library's .so links are not resolved one by one)
for link in $(printf '%s\n' "$links" | grep -E -e "$(with_homes "$globs${ancestors:+|$ancestors}")"); do
    target=$(resolve "$link") || continue
    [ -n "$target" ] && in_image "$target" || continue
    if [ -f "$prefix$target" ]; then
        through="$through$link$soh$target${soh}symlink to $target$nl"
    elif [ -d "$prefix$target" ] && [ -n "$ancestors" ] &&
        printf '%s\n' "$link" | grep -qE -e "$(with_homes "$ancestors")"; then
        for path in $(find "$prefix$target/" -type f 2>/dev/null | awk -v n=$((${#prefix} + ${#target})) '{ print substr($0, n + 1) }'); do
            through="$through$link$path$soh$target$path${soh}via symlink $link -> $target$nl"
        done
    fi
done

# --- location rules and rules scoped to paths ---------------------------------------------------
progress paths
for glob in $(field glob); do
    index=${glob%% *}
    rule_info "$index"
    exclude_re=$(field "exclude $index")
    # candidates as PATH<SOH>REAL<SOH>DETAIL: the files, and what symlinks show of others
    hits=$({
        printf '%s\n' "$files" | awk -v s="$soh" 'NF { print $0 s $0 s }'
        printf '%s' "$through"
    } | RE=$(with_homes "${glob#* }") awk -v s="$soh" '{ split($0, f, s) } f[1] ~ ENVIRON["RE"]')
    for hit in $hits; do
        path=${hit%%"$soh"*}
        if [ -n "$exclude_re" ] && printf '%s\n' "$path" | grep -qE -e "$(with_homes "$exclude_re")"; then
            continue
        fi
        rest=${hit#*"$soh"}
        real=${rest%%"$soh"*}
        detail=${rest#*"$soh"}
        if [ "$mode" = presence ]; then
            size=$(wc -c < "$prefix$real" 2>/dev/null | tr -d ' ')
            [ "${size:-0}" -gt 0 ] || continue
            digest="size:$size"
            [ "$size" -le "$maxsize" ] && digest=$(sha256sum < "$prefix$real" | cut -c1-64)
            fp=$(printf 'location\000%s\000%s\000%s' "$id" "$path" "$digest" | hmac)
            add "$id" "$path" "" "$fp" "$size" "" "$detail"
        else
            records=$(grep -I -n -o -E -e "$(field "ere $index")" "$prefix$real" 2>/dev/null |
                awk -v p="$path" -v s="$soh" '{ print p s $0 }')
            reader=cat
            [ -n "$records" ] && matches "$index" "$records"
        fi
        expired && break 2
    done
done

# --- content rules: one grep -E pass for candidate files, then each rule on those files ---------
progress content
set --
grep_rules=$(field rule | awk '$3 == "grep" && $9 != "multi" { print $1 }')
multi_rules=$(field rule | awk '$3 == "grep" && $9 == "multi" { print $1 }')
for index in $grep_rules; do
    set -- "$@" -e "$(field "ere $index")"
done
for index in $multi_rules; do
    set -- "$@" -e "$(field "kw $index")"
done
as_args() { printf '%s\n' "$1" | awk -v p="$prefix" 'NF { print p $0 }' | tr '\n' '\000'; }
relative() { awk -v n=${#prefix} '{ print substr($0, n + 1) }'; }
grep_skips() {  # grep's "grep: NAME: REASON" lines: not scanned
    for line in $(printf '%s\n' "$1" | grep '^grep: '); do
        what=${line#grep: }
        case "$what" in *"No such file"* | *"binary file matches"* | warning*) continue ;; esac
        reason="I/O error: ${what##*: }"
        case "$what" in *denied*) reason="permission denied" ;; esac
        skip "$(printf '%s' "${what%: *}" | relative)" "$reason"
    done
}
multiline() {  # rule index, file: line breaks read as spaces ($reader reads the file)
    ere=$(field "ere $1")
    for hit in $($reader "$prefix$2" | sed 's/\r$//' | tr '\n' ' ' | grep -o -b -E -e "$ere"); do
        offset=${hit%%:*}
        lineno=$(($($reader "$prefix$2" | sed 's/\r$//' | head -c "$offset" | wc -l) + 1))
        matches "$1" "$2$soh$lineno:${hit#*:}"
    done
}
content() {  # files (guest paths, one a line), then the grep patterns: every content rule
    list=$1
    shift
    [ $# -gt 0 ] || return 0
    out=$(as_args "$list" | limited xargs -0 grep -I -l -E "$@" 2>&1)
    grep_skips "$out"
    candidates=$(printf '%s\n' "$out" | grep -v '^grep: ' | relative)
    for index in $grep_rules; do
        expired && break
        rule_info "$index"
        records=$(as_args "$candidates" | xargs -0 grep -I -H -Z -n -o -s -E -e "$(field "ere $index")" |
            tr '\000' '\001' | relative)
        [ -n "$records" ] && matches "$index" "$records"
    done
    for index in $multi_rules; do
        rule_info "$index"
        for path in $(as_args "$candidates" | xargs -0 grep -I -l -s -E -e "$(field "kw $index")" | relative); do
            multiline "$index" "$path"
            expired && break
        done
    done
}
shift 0
patterns=$#
if [ "$patterns" -gt 0 ] && ! expired; then
    reader=cat
    content "$text_files" "$@"
    # files grep takes for binary: UTF-16 and UTF-32 text are not read by this fallback
    for path in $(as_args "$text_files" | xargs -0 grep -I -L -s -e '' | relative); do
        head=$(head -c 16 "$prefix$path" | od -An -tx1 | tr -d ' \n')
        case "$head" in
        fffe0000* | 0000feff*) skip "$path" "unsupported encoding (UTF-32 text)" ;;
        fffe* | feff*) skip "$path" "UTF-16 text: the sh fallback reads UTF-8 only (install python3)" ;;
        *)  # UTF-16 without a byte order mark: every other byte NUL
            if printf '%s\n' "$head" | grep -qE '^(([1-9a-f][0-9a-f]|0[1-9a-f])00){8}$|^(00([1-9a-f][0-9a-f]|0[1-9a-f])){8}$'; then
                skip "$path" "UTF-16 text: the sh fallback reads UTF-8 only (install python3)"
            fi
            ;;
        esac
    done
fi

# --- compressed files: gzip, xz and bzip2 through their tools; zip and tar are not read ---------
progress compressed
for path in $compressed; do
    expired && break
    package_unchanged "$path" && { suppressed_pkg=$((suppressed_pkg + 1)); continue; }
    magic=$(head -c 6 "$prefix$path" | od -An -tx1 | tr -d ' \n')
    case "$magic" in
    1f8b*) tool=gzip reader=gz ;;
    fd377a585a00*) tool=xz reader=xzd ;;
    425a68*) tool=bzip2 reader=bz ;;
    504b0304*) skip "$path" "zip archive: the sh fallback does not read members (install python3)"; continue ;;
    *)  # not compressed after all: a text file with a compressed-looking name
        reader=cat
        [ "$patterns" -gt 0 ] && content "$path" "$@"
        continue
        ;;
    esac
    if ! command -v "$tool" >/dev/null 2>&1; then
        skip "$path" "compressed ($tool): the tool is not installed"
        continue
    fi
    size=$($reader "$prefix$path" 2>/dev/null | head -c $((maxexp + 1)) | wc -c | tr -d ' ')
    if [ "$size" -gt "$maxexp" ]; then
        skip "$path" "expands beyond the $maxexp bytes bound"
        continue
    fi
    if [ "$($reader "$prefix$path" 2>/dev/null | head -c 262 | tail -c 5)" = ustar ]; then
        skip "$path" "tar archive: the sh fallback does not read members (install python3)"
        continue
    fi
    if ! $reader "$prefix$path" >/dev/null 2>&1; then
        skip "$path" "cannot decompress ($tool failed)"
        continue
    fi
    for index in $grep_rules; do
        rule_info "$index"
        records=$($reader "$prefix$path" | grep -I -n -o -E -e "$(field "ere $index")" |
            awk -v p="$path" -v s="$soh" '{ print p s $0 }')
        [ -n "$records" ] && matches "$index" "$records"
    done
    for index in $multi_rules; do
        rule_info "$index"
        multiline "$index" "$path"
    done
done
reader=cat

nfiles=${nfiles:-0}
progress done
excluded_list=""
for dir in $excluded; do excluded_list="$excluded_list${excluded_list:+,}\"$(json "$dir")\""; done
printf '{"schema":1,"complete":%s,"findings":[%s],"not_scanned":[%s],"not_scanned_total":%s,"excluded":[%s],"stats":{"engine":"sh","files":%s,"skipped_large":%s,"excluded_paths":[%s],"suppressed_package_files":%s,"suppressed_examples":%s,"elapsed":%s},"errors":[%s]}\n' \
    "$complete" "$findings" "$not_scanned" "$nskipped" "$excluded_json" "$nfiles" "${large:-0}" \
    "$excluded_list" "$suppressed_pkg" "$suppressed_examples" "$(($(now) - t0))" "$errors"
