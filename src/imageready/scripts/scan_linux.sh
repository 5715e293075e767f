# imageready sensitive-data scan: the POSIX sh fallback for guests without python3.
#
# Runs after the engine's head (IMAGEREADY_T0, the python3 check) as `sh -c`. Reads the '#SH'
# configuration lines of scan_linux.py's stdin (the HMAC key among them: stdin only, never argv),
# uses only find, grep -E, sed, awk, sha256sum, md5sum, base64, wc, tr and xargs, and prints one
# JSON document like scan_linux.py (stats.engine "sh"). It writes nothing: no here-documents
# (bash backs them with temporary files) and every value travels through pipes only. Values
# never leave in clear: rule, path, line, length, at most 4 leading characters, HMAC-SHA256.
# Limits: file names containing a newline are skipped; much slower than the python3 engine.
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
    return 0
}

block_body() {  # path line: the key material after a BEGIN header, or nothing
    awk -v n="$2" '
        NR == n { rest = $0; sub(/.*PRIVATE KEY( BLOCK)?-----/, "", rest)
                  if (index(rest, "-----END")) { rest = substr(rest, 1, index(rest, "-----END") - 1); done = 1 }
                  body = rest; next }
        NR > n && !done { if (index($0, "-----END")) { body = body "\n" substr($0, 1, index($0, "-----END") - 1); done = 1; exit }
                  body = body "\n" $0; if (NR > n + 400) exit }
        END { if (!done) exit
              gsub(/\\n/, "\n", body); k = split(body, parts, "\n"); out = ""
              for (i = 1; i <= k; i++) { p = parts[i]
                  if (p ~ /^[ \t"'"'"'+]*[A-Za-z-]+: /) continue
                  # as the python engine: the longest base64 run, then only quotes, commas,
                  # concatenation and spaces (a "+" that ends a base64 line is key material)
                  sub(/^[ \t"'"'"'+]*/, "", p); match(p, /^[A-Za-z0-9+\/=]*/)
                  b = substr(p, 1, RLENGTH); r = substr(p, RLENGTH + 1)
                  if (r !~ /^[ \t"'"'"',+;\r]*$/) exit
                  out = out b }
              if (length(out) >= 64) print out }' "$prefix$1"
}

group_of() {  # text ere group: the group's text (grep -o printed exactly one match)
    printf '%s\n' "$1" | sed -E -n "s$soh^($2)\$$soh\\$(($3 + 1))${soh}p"
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
    id=$1 mode=$2 group=$3 dgroup=$4 label=$5 decode=$6 block=$7
}

# --- inventory: every regular file on disk file systems -----------------------------------------
progress walk
excluded=""
fstypes=" $(field fstypes) "
while IFS=' ' read -r _ point fstype _; do
    point=$(printf '%b' "$(printf '%s' "$point" | sed 's/\\\([0-7][0-7][0-7]\)/\\0\1/g')")
    case "$fstypes" in *" $fstype "*) ;; *) case "$fstype" in fuse.*) ;; *) continue ;; esac ;; esac
    case "$point" in "$prefix"/?*) excluded="$excluded${point#"$prefix"}$nl" ;; esac
done < /proc/self/mounts
temp=$(sed -n 's/^[ 	]*ResourceDisk\.MountPoint[ 	]*=[ 	]*//p' "$prefix/etc/waagent.conf" 2>/dev/null)
cloud=""
[ -e "$prefix/etc/cloud" ] && cloud=/mnt
for dir in "${temp:-/mnt/resource}" $cloud; do
    [ -d "$prefix$dir" ] && excluded="$excluded$dir$nl"
done
set -- "$prefix/"
for dir in $excluded; do
    set -- "$@" -path "$prefix$dir" -prune -o
done
# one walk: over-size files tagged "L" (inventory only), the others also get content-scanned
listing=$(limited find "$@" -type f \( -size +"$maxsize"c -exec printf 'L%s\n' {} + -o -print \) \
    2>/dev/null | awk -v n=${#prefix} '/^L/ { print "L" substr($0, n + 2); next } { print substr($0, n + 1) }')
expired
files=$(printf '%s\n' "$listing" | sed 's/^L//')
text_files=$(printf '%s\n' "$listing" | grep -v '^L')
nfiles=$(printf '%s\n' "$files" | grep -c .)
large=$(printf '%s\n' "$listing" | grep -c '^L')

homes="/root|/home/[^/]+"
while IFS=: read -r _ _ _ _ _ home _; do
    if [ -n "$home" ] && [ "$home" != / ] && [ -d "$prefix$home" ]; then
        homes="$homes|$(printf '%s' "$home" | sed 's/[].[^$*+?(){}|\\]/\\&/g')"
    fi
done < "$prefix/etc/passwd"
with_homes() {
    case "$1" in
    *@HOME@*) printf '%s(%s)%s\n' "${1%%@HOME@*}" "$homes" "${1#*@HOME@}" ;;
    *) printf '%s\n' "$1" ;;
    esac
}

# --- location rules and rules scoped to paths ---------------------------------------------------
progress paths
for glob in $(field glob); do
    index=${glob%% *}
    rule_info "$index"
    hits=$(printf '%s\n' "$files" | grep -E -e "$(with_homes "${glob#* }")")
    exclude=$(field "exclude $index")
    [ -n "$exclude" ] && hits=$(printf '%s\n' "$hits" | grep -v -E -e "$(with_homes "$exclude")")
    for path in $hits; do
        if [ "$mode" = presence ]; then
            size=$(wc -c < "$prefix$path" 2>/dev/null | tr -d ' ')
            [ "${size:-0}" -gt 0 ] || continue
            digest="size:$size"
            [ "$size" -le "$maxsize" ] && digest=$(sha256sum < "$prefix$path" | cut -c1-64)
            fp=$(printf 'location\000%s\000%s\000%s' "$id" "$path" "$digest" | hmac)
            add "$id" "$path" "" "$fp" "$size" "" ""
        else
            records=$(grep -I -n -o -E -e "$(field "ere $index")" "$prefix$path" 2>/dev/null |
                awk -v p="$path" -v s="$soh" '{ print p s $0 }')
            [ -n "$records" ] && matches "$index" "$records"
        fi
        expired && break 2
    done
done

# --- content rules: one grep -E pass for candidate files, then each rule on those files ---------
progress content
set --
grep_rules=$(field rule | awk '$3 == "grep" { print $1 }')
for index in $grep_rules; do
    set -- "$@" -e "$(field "ere $index")"
done
as_args() { printf '%s\n' "$1" | awk -v p="$prefix" 'NF { print p $0 }' | tr '\n' '\000'; }
relative() { awk -v n=${#prefix} '{ print substr($0, n + 1) }'; }
if [ $# -gt 0 ] && ! expired; then
    candidates=$(as_args "$text_files" | limited xargs -0 grep -I -l -s -E "$@" | relative)
    for index in $grep_rules; do
        expired && break
        rule_info "$index"
        records=$(as_args "$candidates" | xargs -0 grep -I -H -Z -n -o -s -E -e "$(field "ere $index")" |
            tr '\000' '\001' | relative)
        [ -n "$records" ] && matches "$index" "$records"
    done
fi

nfiles=${nfiles:-0}
progress done
excluded_json=""
for dir in $excluded; do excluded_json="$excluded_json${excluded_json:+,}\"$(json "$dir")\""; done
printf '{"schema":1,"complete":%s,"findings":[%s],"stats":{"engine":"sh","files":%s,"skipped_large":%s,"excluded_paths":[%s],"suppressed_package_files":%s,"suppressed_examples":%s,"elapsed":%s},"errors":[%s]}\n' \
    "$complete" "$findings" "$nfiles" "${large:-0}" "$excluded_json" "$suppressed_pkg" \
    "$suppressed_examples" "$(($(now) - t0))" "$errors"
