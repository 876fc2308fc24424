#!/usr/bin/env bash
# Static checks of the deployment files in deploy/. CI runs `bash deploy/check.sh`.
#
# Requires systemd-analyze and systemd-sysusers (Debian package systemd) and
# python3 3.11 or later (for tomllib). The Caddyfile and nginx checks run only
# when caddy, or nginx and openssl, are installed, and print a note otherwise.
# The script installs nothing and writes only below a temporary directory.
#
# `systemd-analyze verify` rejects a unit whose ExecStart= binary does not
# exist, so the units are verified unchanged inside a temporary root
# (--root): a copy of the host's system units, the two KRT-Com units, and
# /usr/local/bin/krt-relay and krt-bot. Those two are the release binaries
# when target/release (or $KRT_BIN_DIR) has them, else placeholder scripts.
# Either way a wrong ExecStart= path, an unknown key or an invalid value fails.
#
# Exit status: 0 when every check passed, 1 otherwise.

set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$deploy_dir")
bin_dir=${KRT_BIN_DIR:-$repo_dir/target/release}
units=(krt-relay.service krt-bot.service)

# Highest accepted `systemd-analyze security` exposure, in tenths: 30 is 3.0
# on the 0-10 scale that the command prints. systemd 252 rates both units 1.4.
max_exposure=30

failures=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

pass() {
    echo "ok: $*"
}

note() {
    echo "note: $*"
}

# Verifies both units with systemd-analyze inside a temporary root.
check_units() {
    local root=$work/root
    local system_units
    system_units=$(readlink -f /lib/systemd/system)
    mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin"
    # Default dependencies (sysinit.target, basic.target, ...) must resolve
    # inside the root, so the host's system units are copied there.
    cp -a "$system_units" "$root/usr/lib/systemd/"

    local unit name
    for unit in "${units[@]}"; do
        cp "$deploy_dir/systemd/$unit" "$root/etc/systemd/system/$unit"
        name=${unit%.service}
        if [[ -x $bin_dir/$name ]]; then
            cp "$bin_dir/$name" "$root/usr/local/bin/$name"
            note "verifying $unit with the binary $bin_dir/$name"
        else
            printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/$name"
            chmod 0755 "$root/usr/local/bin/$name"
            note "verifying $unit with a placeholder for /usr/local/bin/$name (no $bin_dir/$name)"
        fi
    done

    local output status
    for unit in "${units[@]}"; do
        # Any output line that names the unit also counts as a failure, in
        # case a systemd release reports a problem but exits 0.
        status=0
        output=$(systemd-analyze verify --man=no --recursive-errors=yes --root="$root" \
            "$root/etc/systemd/system/$unit" 2>&1) || status=$?
        if [[ $status -ne 0 ]] || grep -q "${unit%.service}" <<<"$output"; then
            fail "systemd-analyze verify $unit (exit status $status):"
            echo "$output" >&2
        else
            pass "systemd-analyze verify $unit"
        fi

        status=0
        output=$(systemd-analyze security --offline=true --threshold="$max_exposure" \
            --root="$root" "$root/etc/systemd/system/$unit" 2>&1) || status=$?
        if [[ $status -ne 0 ]]; then
            fail "systemd-analyze security $unit: exposure above $((max_exposure / 10)).$((max_exposure % 10)) (exit status $status):"
            grep -E "Overall exposure|✗" <<<"$output" >&2 || echo "$output" >&2
        else
            pass "systemd-analyze security: $(grep -o "exposure level for .*" <<<"$output")"
        fi
    done
}

# Checks that each unit contains the settings the deployment relies on, and
# that both units declare the shared directories identically.
check_unit_settings() {
    local required=(
        "User=krt"
        "Group=krt"
        "Restart=on-failure"
        "LimitNOFILE=65535"
        "StateDirectory=krt-com"
        "RuntimeDirectory=krt-com"
        "RuntimeDirectoryPreserve=yes"
        "NoNewPrivileges=yes"
        "ProtectSystem=strict"
        "ProtectHome=yes"
        "PrivateTmp=yes"
    )
    local unit setting missing
    for unit in "${units[@]}"; do
        missing=()
        for setting in "${required[@]}"; do
            grep -qxF "$setting" "$deploy_dir/systemd/$unit" || missing+=("$setting")
        done
        if [[ ${#missing[@]} -gt 0 ]]; then
            fail "$unit lacks: ${missing[*]}"
        else
            pass "$unit has the required settings"
        fi
    done

    local pattern='^(User|Group|UMask|StateDirectory|StateDirectoryMode|RuntimeDirectory|RuntimeDirectoryMode|RuntimeDirectoryPreserve|ReadWritePaths)='
    if diff <(grep -E "$pattern" "$deploy_dir/systemd/krt-relay.service") \
        <(grep -E "$pattern" "$deploy_dir/systemd/krt-bot.service") >"$work/dirs.diff"; then
        pass "both units share user, directories and modes"
    else
        fail "krt-relay.service and krt-bot.service differ in shared settings (< relay, > bot):"
        cat "$work/dirs.diff" >&2
    fi

    if grep -q '^After=.*krt-relay.service' "$deploy_dir/systemd/krt-bot.service" &&
        grep -q '^Wants=.*krt-relay.service' "$deploy_dir/systemd/krt-bot.service"; then
        pass "krt-bot.service is ordered after and wants krt-relay.service"
    else
        fail "krt-bot.service needs After=krt-relay.service and Wants=krt-relay.service"
    fi
}

# Runs the sysusers.d file through `systemd-sysusers --dry-run` in an empty
# root, which leaves the host's user database alone.
check_sysusers() {
    local file=$deploy_dir/sysusers/krt-com.conf output status=0
    mkdir -p "$work/sysusers-root"
    output=$(systemd-sysusers --root="$work/sysusers-root" --dry-run "$file" 2>&1) || status=$?
    if [[ $status -ne 0 ]]; then
        fail "systemd-sysusers --dry-run $file (exit status $status):"
        echo "$output" >&2
    elif ! grep -q "user 'krt'" <<<"$output"; then
        fail "systemd-sysusers --dry-run $file does not create user krt:"
        echo "$output" >&2
    else
        pass "systemd-sysusers --dry-run creates user krt"
    fi
}

# Checks each setting of the sysctl.d file: `key = value` syntax, a comment
# line above it, no duplicate key, a key that exists under /proc/sys, and a
# value with as many integer fields as the current one. Nothing is written.
check_sysctl() {
    local file=$deploy_dir/sysctl/90-krt-com.conf
    local line_number=0 previous="" line key value path current
    local errors=0 checked=0 skipped=0
    declare -A seen=()
    while IFS= read -r line || [[ -n $line ]]; do
        line_number=$((line_number + 1))
        line=${line#"${line%%[![:space:]]*}"}
        line=${line%"${line##*[![:space:]]}"}
        if [[ -z $line || $line == \#* || $line == \;* ]]; then
            [[ -n $line ]] && previous=$line || previous=""
            continue
        fi
        if [[ ! $line =~ ^-?([A-Za-z0-9_./-]+)[[:space:]]*=[[:space:]]*(.+)$ ]]; then
            fail "$file:$line_number: expected 'key = value', found: $line"
            errors=$((errors + 1))
            previous=""
            continue
        fi
        key=${BASH_REMATCH[1]}
        value=${BASH_REMATCH[2]}
        if [[ $previous != \#* ]]; then
            fail "$file:$line_number: $key has no reason comment on the line above"
            errors=$((errors + 1))
        fi
        previous=""
        if [[ -n ${seen[$key]:-} ]]; then
            fail "$file:$line_number: $key is already set on line ${seen[$key]}"
            errors=$((errors + 1))
        fi
        seen[$key]=$line_number

        # sysctl.d(5): when the first separator is '/', the key is a path.
        # When it is '.', dots and slashes swap roles.
        if [[ $key == */* && ${key%%/*} != *.* ]]; then
            path=/proc/sys/$key
        else
            path=/proc/sys/$(tr './' '/.' <<<"$key")
        fi
        if [[ ! -e $path ]]; then
            note "$file:$line_number: $key not checked: $path does not exist here (a container, or another kernel)"
            skipped=$((skipped + 1))
            continue
        fi
        if ! current=$(cat "$path" 2>/dev/null); then
            note "$file:$line_number: $key not checked: $path is not readable"
            skipped=$((skipped + 1))
            continue
        fi
        local -a new_fields current_fields
        read -r -a new_fields <<<"$value"
        read -r -a current_fields <<<"$current"
        if [[ ${#new_fields[@]} -ne ${#current_fields[@]} ]]; then
            fail "$file:$line_number: $key has ${#new_fields[@]} value fields, the kernel has ${#current_fields[@]} ($current)"
            errors=$((errors + 1))
            continue
        fi
        if [[ $current =~ ^[0-9[:space:]-]+$ && ! $value =~ ^[0-9[:space:]]+$ ]]; then
            fail "$file:$line_number: $key takes integers, found: $value"
            errors=$((errors + 1))
            continue
        fi
        checked=$((checked + 1))
    done <"$file"

    if [[ $checked -eq 0 && $skipped -eq 0 && $errors -eq 0 ]]; then
        fail "$file contains no settings"
    elif [[ $errors -eq 0 ]]; then
        pass "$file: $checked settings checked against /proc/sys, $skipped skipped"
    fi
}

check_toml() {
    local file=$deploy_dir/krt-com.toml output status=0
    if ! python3 -c 'import tomllib' 2>/dev/null; then
        note "$file not checked: needs python3 with tomllib (3.11 or later)"
        return
    fi
    output=$(python3 - "$file" 2>&1 <<'PYTHON'
import sys
import tomllib

try:
    with open(sys.argv[1], "rb") as config:
        tomllib.load(config)
except tomllib.TOMLDecodeError as error:
    sys.exit(str(error))
PYTHON
    ) || status=$?
    if [[ $status -ne 0 ]]; then
        fail "$file is not valid TOML: $output"
    else
        pass "$file parses as TOML"
    fi
}

check_caddy() {
    local file=$deploy_dir/caddy/Caddyfile output status=0
    if ! command -v caddy >/dev/null; then
        note "$file not checked: caddy is not installed"
        return
    fi
    # Caddy writes its state below HOME and XDG_DATA_HOME.
    output=$(HOME=$work/caddy XDG_DATA_HOME=$work/caddy XDG_CONFIG_HOME=$work/caddy \
        caddy adapt --config "$file" --adapter caddyfile --validate 2>&1 >/dev/null) || status=$?
    if [[ $status -ne 0 ]]; then
        fail "caddy adapt --validate $file (exit status $status):"
        echo "$output" >&2
    else
        pass "caddy validates $file ($(caddy version | cut -d' ' -f1))"
    fi
    if ! caddy fmt "$file" | cmp -s - "$file"; then
        note "$file is not in 'caddy fmt' layout"
    fi
}

# Runs `nginx -t` on the site file, included from a minimal nginx.conf whose
# paths all lie in the temporary directory, with a throwaway self-signed
# certificate in place of the Let's Encrypt files.
check_nginx() {
    local file=$deploy_dir/nginx/krt-com.conf dir=$work/nginx output status=0
    if ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then
        note "$file not checked: needs nginx and openssl"
        return
    fi
    mkdir -p "$dir/temp"
    if ! openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=radio.example.org \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1; then
        fail "openssl could not create a test certificate for the nginx check"
        return
    fi
    sed -E -e "s#^([[:space:]]*ssl_certificate)[[:space:]]+[^;]+;#\1 $dir/cert.pem;#" \
        -e "s#^([[:space:]]*ssl_certificate_key)[[:space:]]+[^;]+;#\1 $dir/key.pem;#" \
        "$file" >"$dir/site.conf"
    cat >"$dir/nginx.conf" <<EOF
pid $dir/nginx.pid;
error_log $dir/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $dir/temp/body;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    include $dir/site.conf;
}
EOF
    output=$(nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" 2>&1) || status=$?
    if [[ $status -ne 0 ]]; then
        fail "nginx -t $file (exit status $status; site.conf has the same line numbers):"
        echo "$output" >&2
    else
        pass "nginx -t accepts $file ($(nginx -v 2>&1 | sed 's/.*version: //'))"
    fi
}

for tool in systemd-analyze systemd-sysusers; do
    if ! command -v "$tool" >/dev/null; then
        echo "FAIL: $tool not found: install the Debian package systemd" >&2
        exit 1
    fi
done
echo "systemd $(systemd-analyze --version | head -n 1 | cut -d' ' -f2)"

check_units
check_unit_settings
check_sysusers
check_sysctl
check_toml
check_caddy
check_nginx

if [[ $failures -gt 0 ]]; then
    echo "deploy/check.sh: $failures check(s) failed" >&2
    exit 1
fi
echo "deploy/check.sh: all checks passed"
