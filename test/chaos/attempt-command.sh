#!/bin/sh
# The processing command of the chaos tests. It proves by itself that no two attempts of one run overlap:
# an O_EXCL lock file in the run's output directory names the holder (host attempt pid start-time); a lock
# held by a live process, or one that changes under a running attempt, is recorded as a violation in the
# evidence directory (outside the output root, so clean_output cannot erase it). Every attempt also appends
# start/alive/end lines with one clock (/proc/uptime, centiseconds) to a per-run journal for a second check.
#
# argv: NUMBER OUTPUT ATTEMPT HOST EVIDENCE_DIR PLANS_DIR STEP_SECONDS [linger]
# With "linger", an attempt whose daemon died (its parent changed) never ends by itself: it keeps working until
# it is killed, so a restart always has its orphans to kill, however slow the machine is.
# PLANS_DIR/NUMBER holds one line per attempt, "STEPS EXIT_CODE [GATE]"; the last line serves later attempts.
# With a GATE file the attempt goes on working after its steps until the test creates the gate. A GATE ending in
# @HOST@ is per host: @HOST@ is replaced by this attempt's host (one host's attempts can be held, others' not).
number=$1 out=$2 attempt=$3 host=$4 ev=$5 plans=$6 step=$7 linger=$8
parent=$PPID

read -r stat < /proc/$$/stat
set -- $stat
mystart=${22}
me="$host $attempt $$ $mystart"
lock="$out/lock"
journal="$ev/journal/$number"

clock() {
  read -r up _ < /proc/uptime
  now=${up%.*}${up#*.}
}
note() {
  clock
  echo "$1 $host:$attempt:$$ $now" >> "$journal"
}
violation() {
  echo "$1" > "$ev/violations/$number-$host-$attempt-$$"
  note violation
  exit 97
}
# True while the process named by a lock's content (host attempt pid start) is alive and not recycled.
holder_alive() {
  [ -n "$3" ] && [ -n "$4" ] || return 1
  s=
  read -r s 2>/dev/null < "/proc/$3/stat" || return 1
  set -- $4 $s
  [ "$4" != Z ] && [ "$1" = "${23}" ]
}
# True once this process's parent is no longer the daemon that started it.
orphaned() {
  read -r st < /proc/$$/stat
  set -- $st
  [ "$4" != "$parent" ]
}
linger_if_orphaned() {
  [ "$linger" = linger ] || return 0
  orphaned || return 0
  note orphaned
  while :; do
    sleep "$step"
    note alive
    still_mine || violation "attempt ($me) found its lock replaced by ($current) while orphaned"
  done
}
take_lock() {
  ( set -C; echo "$me" > "$lock" ) 2>/dev/null
}
still_mine() {
  current=
  read -r current 2>/dev/null < "$lock"
  [ "$current" = "$me" ]
}

note start
echo "run $number attempt $attempt on $host"

if ! take_lock; then
  holder=
  read -r holder 2>/dev/null < "$lock"
  # Between O_EXCL create and write a live holder's lock is empty for an instant.
  if [ -z "$holder" ]; then sleep 0.2; read -r holder 2>/dev/null < "$lock"; fi
  # shellcheck disable=SC2086
  if holder_alive $holder; then violation "attempt ($me) started while the lock was held by live ($holder)"; fi
  echo "$me took over the stale lock of ($holder)" >> "$ev/stale/$number"
  rm -f "$lock"
  take_lock || violation "attempt ($me) lost the stale lock to another attempt"
fi

# A grandchild in the command's process group: the supervisor's group kill must reach it.
sleep 1000 < /dev/null > /dev/null 2>&1 &
grandchild=$!
read -r gstat < "/proc/$grandchild/stat"
set -- $gstat
echo "$$ $mystart $grandchild ${22}" > "$ev/procs/$number-$host-$attempt-$$"

steps=1 code=0 gate= k=0
while read -r s c g; do
  k=$((k + 1)) steps=$s code=$c gate=$g
  [ "$k" -ge "$attempt" ] && break
done < "$plans/$number"
case $gate in *@HOST@) gate="${gate%@HOST@}$host" ;; esac

i=0
while [ "$i" -lt "$steps" ]; do
  sleep "$step"
  i=$((i + 1))
  echo "step $i of attempt $attempt" >> "$out/data.txt"
  note alive
  still_mine || violation "attempt ($me) found its lock replaced by ($current) while running"
  linger_if_orphaned
done
while [ -n "$gate" ] && [ ! -e "$gate" ]; do
  sleep "$step"
  note alive
  still_mine || violation "attempt ($me) found its lock replaced by ($current) while waiting for its gate"
done

still_mine || violation "attempt ($me) found its lock replaced by ($current) at its end"
echo "$number $attempt $host" > "$out/result.txt"
kill "$grandchild" 2> /dev/null
note end
rm -f "$lock"
exit "$code"
