#!/usr/bin/env bash
# .ci/deps.sh WHO PACKAGE... - make sure these Debian packages are installed. Fast when they
# are (one dpkg-query each, no apt). As root the missing ones are installed with apt-get;
# otherwise the command to do so is printed and the exit status is 1. WHO names the caller in
# messages (deps, bench-deps, ...). Postfix is preseeded to "No configuration", so installing it
# neither writes /etc/postfix/main.cf nor starts a daemon; and while apt-get runs, a
# policy-rc.d (invoke-rc.d(8)) keeps every package's service from starting: the tests start
# nginx, HAProxy and dnsmasq themselves, on loopback ports of their own.
set -u
who=$1
shift
if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "$who: no dpkg-query (not Debian?); make sure these are installed: $*"
  exit 0
fi
missing=()
for p in "$@"; do
  case "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" in
    *" ok installed") ;;
    *) missing+=("$p") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "$who: installing: ${missing[*]}"
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
  status=$?
  [ "$made_policy" = 1 ] && rm -f "$policy"
  exit "$status"
else
  echo "$who: missing Debian packages: ${missing[*]}" >&2
  echo "$who: install them with:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
